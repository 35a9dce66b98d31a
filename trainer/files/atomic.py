"""Atomic writes for caches that several processes may build at once.

A cache entry is written somewhere private (a temp file or temp folder beside its final path), made
durable with fsync, then moved into place with one `os.replace` / `os.rename`, which POSIX makes
atomic within a file system. Readers therefore see either nothing or the whole entry, never half of
it. Builders pair this with `trainer.files.lock.file_lock`, so that the second of two waits for the
first and then reuses its result instead of building the same thing again.

Typical use::

    with file_lock(cache / f"{key}.lock"):
        if not (cache / key).exists():
            remove_stale_temps(cache / key)
            with atomic_dir(cache / key) as tmp:
                atomic_save_npy(tmp / "x.npy", x)  # or any plain writes under tmp
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

logger = logging.getLogger(__name__)

_TEMP_MARK = ".tmp-"


def _temp_prefix(final_path: Path) -> str:
    # Hidden and derived from the final name, so stale temps of one entry can be found (and
    # removed) without touching those of its neighbours.
    return f".{final_path.name}{_TEMP_MARK}"


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flushes a directory's entries (new names, renames) to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        # Some file systems cannot fsync a directory; the rename is still atomic there.
        if err.errno not in (errno.EINVAL, errno.EBADF, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def _replace_file(path: Path, write: Callable[[BinaryIO], object]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path))
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Writes ``data`` to ``path`` so that readers see the old file or the new one, never a part."""
    _replace_file(Path(path), lambda f: f.write(data))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """`np.save` made atomic (no pickles: object arrays are refused)."""
    # np.save appends ".npy" to bare names; writing to an open file keeps `path` exactly.
    _replace_file(Path(path), lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """fsyncs every file and folder under ``root`` (files first, then their folders)."""
    for folder, _dirs, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(folder)


@contextlib.contextmanager
def atomic_dir(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yields an empty temp folder beside ``final_path``; on success it becomes ``final_path``.

    Everything written under the temp folder is fsynced, then the folder is renamed into place in
    one step. If the block raises, the temp folder is removed and ``final_path`` is untouched. If
    ``final_path`` already exists when the block ends (someone else finished first without the
    lock), the existing entry wins and the new one is discarded: entries are keyed by content, so
    both are equivalent.

    Args:
        final_path: where the finished folder should appear; its parent must exist.
    """
    final_path = Path(final_path)
    tmp = final_path.parent / f"{_temp_prefix(final_path)}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        fsync_tree(tmp)
        try:
            os.rename(tmp, final_path)
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not final_path.is_dir():
                raise
            logger.info("%s appeared while building; keeping the existing one", final_path)
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(final_path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temps(final_path: str | os.PathLike[str]) -> int:
    """Removes temp files/folders that `atomic_dir` or the atomic writers left for ``final_path``.

    They are left only by a builder that died mid-write (a killed process cannot clean up). Call
    this while holding the entry's `file_lock`, so that no live builder's temp is removed.

    Returns:
        How many were removed.
    """
    final_path = Path(final_path)
    removed = 0
    if not final_path.parent.is_dir():
        return 0
    for path in final_path.parent.glob(glob.escape(_temp_prefix(final_path)) + "*"):
        logger.info("removing %s, left by an interrupted build", path)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        removed += 1
    return removed
