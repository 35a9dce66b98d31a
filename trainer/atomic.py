"""Small building blocks for caches that several processes may build at once.

A cache entry is written somewhere private (a temp file or temp folder beside its final path), made
durable with fsync, then moved into place with one `os.replace` / `os.rename`, which POSIX makes
atomic within a file system. Readers therefore see either nothing or the whole entry, never half of
it. `file_lock` lets the second of two builders wait for the first and then reuse its result
instead of building the same thing again.

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
import fcntl
import glob
import io
import logging
import os
import shutil
import struct
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import numpy as np

from trainer.errors import DiskFull

logger = logging.getLogger(__name__)

_TEMP_MARK = ".tmp-"
# Caps the free space `require_free_space` sees, in bytes: a full disk, simulated (tests).
DISK_LIMIT_ENV = "FER_SEARCH_DISK_LIMIT_BYTES"


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


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Holds an exclusive `fcntl.flock` on ``path`` (created if needed) for the block's duration.

    The lock file is never deleted: deleting it would let a third process lock a fresh inode while
    a second still waits on the old one. The kernel releases the lock when its holder dies, so a
    crashed builder never blocks the next one.

    Args:
        path: the lock file; its parent folder must exist.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for %s (another process is building this cache)", path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
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


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """`np.save` made atomic (no pickles: object arrays are refused)."""
    # np.save appends ".npy" to bare names; writing to an open file keeps `path` exactly.
    _replace_file(Path(path), lambda f: np.save(f, np.asarray(array), allow_pickle=False))


def npy_bytes(array: np.ndarray) -> bytes:
    """The .npy serialisation of ``array`` (handy for hashing or small atomic writes)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


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


def free_bytes(folder: str | os.PathLike[str]) -> int:
    """Free bytes on the file system that holds ``folder`` (or, if it does not exist yet, its
    nearest existing parent), capped by ``$FER_SEARCH_DISK_LIMIT_BYTES`` when set."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    limit = os.environ.get(DISK_LIMIT_ENV)
    if limit:
        free = min(free, int(limit))
    return free


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


def shrink_npy(path: Path, rows: int) -> None:
    """Cuts a C-order .npy file down to its first ``rows`` rows, in place.

    The header is rewritten with the new shape, padded to its old length so the data does not
    move, and the file is truncated: no copy of the (possibly gigabytes of) data is made.
    """
    fmt = np.lib.format
    with open(path, "r+b") as f:
        version = fmt.read_magic(f)
        read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}
        shape, fortran_order, dtype = read_header[version](f)
        offset = f.tell()
        if fortran_order or rows > shape[0]:
            raise ValueError(f"cannot shrink {path} of shape {shape} to {rows} rows")
        new_shape = (rows, *shape[1:])
        header = (
            f"{{'descr': {fmt.dtype_to_descr(dtype)!r}, 'fortran_order': False, "
            f"'shape': {new_shape!r}, }}"
        )
        length_format = "<H" if version == (1, 0) else "<I"
        prefix = fmt.magic(*version) + struct.pack(length_format, 0)
        header_len = offset - len(prefix)
        # A shorter shape always fits in the old header's space; pad with spaces as numpy does.
        padded = header.ljust(header_len - 1) + "\n"
        if len(padded) != header_len:
            raise ValueError(f"new header of {path} does not fit its old {header_len} bytes")
        f.seek(0)
        f.write(fmt.magic(*version) + struct.pack(length_format, header_len))
        f.write(padded.encode("latin1"))
        f.truncate(offset + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)

