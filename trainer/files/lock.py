"""An exclusive lock on a file, held across processes: the second of two builders of one cache
entry waits for the first, then reuses its result.

The `filelock` package's `UnixFileLock`: an `fcntl.flock` on the file, which it leaves in place
(deleting it would let a third process lock a fresh inode while a second still waits on the
old one), released by the kernel when its holder dies, so a crashed builder never blocks the
next one. Its fallback to a "soft" lock (a marker file) where the file system has no flock is
turned off: a marker left by a killed builder would block every later one. Where machines share
the cache folder (NFS) the caller hands in a lock held by the storage instead
(`trainer.files.cache_lock`).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from filelock import Timeout, UnixFileLock

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Holds an exclusive lock on ``path`` (created if needed) for the block's duration; waits
    as long as another process (or thread) holds it.

    Args:
        path: the lock file; its parent folder must exist.
    """
    lock = UnixFileLock(path, mode=0o644, fallback_to_soft=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        logger.info("waiting for %s (another process is building this cache)", path)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
