"""The lock around building one cache entry (a crop cache, one split's features): of several
processes asking for the same entry, one builds it and the others wait, then read it.

On one machine a file lock beside the entry does that (`trainer.files.lock.file_lock`). When
workers on several machines share the cache folder (a ReadWriteMany volume, a lab's NFS), file
locks do not hold between the machines, so the caller hands in a `CacheLock` every worker sees:
`search` passes one held by the study's storage (`search.storage.locks.cache_lock`:
an advisory lock in PostgreSQL). The trainer never imports `search`; it only calls what it is
given, and without one it keeps the file lock.

Typical use (the builder re-checks inside the lock: the holder before it may have built it)::

    with entry_lock(cache_lock, "features-train-1a2b", folder / "train-1a2b.lock"):
        refresh(folder)
        if not (folder / "train-1a2b.npy").is_file():
            record_build("features", "train-1a2b")
            ...  # build, written atomically (trainer.files.atomic)
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

from trainer.files.lock import file_lock

builds = logging.getLogger("trainer.files.builds")
"""Where every cache build is told (INFO, the record's `build` attribute: (kind, name)); tests
count builds across processes with a handler on it (tests/infra/hooks.py)."""

CacheLock = Callable[[str], AbstractContextManager[None]]
"""Makes the exclusive lock named `name` (letters, digits and '-', one name per cache entry),
held by every process that may build that entry, on whatever machine."""


def entry_lock(cache_lock: CacheLock | None, name: str,
               lock_file: Path) -> AbstractContextManager[None]:
    """The lock guarding the build of the cache entry `name`: `cache_lock(name)` when one is
    given (seen across machines), else a file lock on `lock_file` (one machine).

    With a `cache_lock` no file lock is taken: over NFS a file lock may not hold between
    machines, or may fail outright (no lock daemon), and the storage's lock serialises the
    processes of one machine as well.
    """
    if cache_lock is not None:
        return cache_lock(name)
    return file_lock(lock_file)


def refresh(folder: Path) -> None:
    """Opens and lists `folder` before a builder re-checks for an entry another process may just
    have written. An NFS client may answer a lookup from its cache of names it found missing;
    opening the folder makes it ask the server for the folder's current state (close-to-open
    consistency). On a local disk this costs one small `scandir`."""
    with contextlib.suppress(FileNotFoundError), os.scandir(folder) as entries:
        for _ in entries:
            pass


def record_build(kind: str, name: str) -> None:
    """Tells the `builds` logger that this process builds `kind` `name` (at INFO: silent unless
    someone listens)."""
    builds.info("building %s %s", kind, name, extra={"build": (kind, name)})
