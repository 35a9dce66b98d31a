"""An exclusive lock on a file, held across processes (`fcntl.flock`): the second of two
builders of one cache entry waits for the first, then reuses its result."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Iterator

logger = logging.getLogger(__name__)


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
