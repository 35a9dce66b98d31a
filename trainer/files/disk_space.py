"""Free disk space: how much there is, and a clear `DiskFull` instead of a SIGBUS or a bare
"No space left on device" when a cache will not fit."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from trainer.errors import DiskFull


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds ``folder`` (or, if it does not exist yet, its
    nearest existing parent)."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def require_free_space(folder: str | os.PathLike[str], needed: int, what: str) -> None:
    """Raises `DiskFull` unless ``folder``'s file system has ``needed`` bytes free.

    Memory-mapped caches must check first: writing a page of a mapped file that the file system
    cannot back kills the process with SIGBUS, with no exception to catch and no message.
    """
    free = free_bytes(folder)
    if free < needed:
        raise DiskFull(folder, needed, free, what)


@contextlib.contextmanager
def disk_full_as_error(folder: str | os.PathLike[str], needed: int, what: str) -> Iterator[None]:
    """Turns "No space left on device" raised in the block into `DiskFull` (one clear line)."""
    try:
        yield
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise DiskFull(folder, needed, free_bytes(folder), what) from err
