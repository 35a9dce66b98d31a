"""Test hooks, kept out of the product code: a worker that dies at a known epoch, cache builds
written to a log, cache files that lock nothing (machines sharing a folder over NFS), a small
disk. Each is a fake put in place of a product function for a block (`with hooks.kill_at_epoch(2):
...`), undone after it.

In-process a test enters the one it needs. A worker process gets them from its environment, by
the tests' knobs (tests/infra/settings.py): `python -m tests.infra.hooks ARGS` installs those
that are set, then runs `fer-search ARGS` (tests/infra/workers.spawn_worker does this when the
environment names one; tests/search/poison_worker.py is the poison test's own such wrapper).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from search.cli.main import entry
from search.trial.runner import TrialSession
from tests.infra import settings
from trainer.files import cache_lock, disk_space

KILL_AT_EPOCH_ENV = "FER_SEARCH_TEST_KILL_AT_EPOCH"
HOOK_VARIABLES = frozenset({KILL_AT_EPOCH_ENV, "FER_SEARCH_TEST_BUILD_LOG",
                            "FER_SEARCH_TEST_CACHE_UNLOCKED", "FER_SEARCH_TEST_DISK_LIMIT_BYTES"})
"""The knobs that make `workers.spawn_worker` start a worker through this module."""


@contextlib.contextmanager
def kill_at_epoch(epoch: int) -> Iterator[None]:
    """A trial's worker SIGKILLs itself right after its trainer reports `epoch` of a trial (the
    report written or kept as the trial's session does): a machine lost at a known point."""
    original = TrialSession.on_epoch_end

    def on_epoch_end(self: TrialSession, done: int, metrics: dict[str, float]) -> None:
        try:
            original(self, done, metrics)
        finally:
            if done == epoch:
                os.kill(os.getpid(), signal.SIGKILL)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TrialSession, "on_epoch_end", on_epoch_end)
        yield


class _BuildLog(logging.Handler):
    """Appends `KIND NAME PID` to a file for each cache build the trainer tells
    (`trainer.files.cache_lock.builds`), one write per line with O_APPEND, so lines of
    concurrent processes do not mix."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(logging.INFO)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        kind, name = record.build
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{kind} {name} {os.getpid()}\n".encode())
        finally:
            os.close(fd)


@contextlib.contextmanager
def build_log(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Every crop cache or feature set built in the block appends one line to `path`."""
    logger, handler = cache_lock.builds, _BuildLog(path)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield Path(path)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


@contextlib.contextmanager
def unlocked_cache_files() -> Iterator[None]:
    """A cache entry's own file lock locks nothing, as between machines that share the cache
    folder over NFS: only a lock handed in by `search` (held by the storage) then serialises
    its builders."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cache_lock, "file_lock", lambda path: contextlib.nullcontext())
        yield


@contextlib.contextmanager
def disk_limit(limit: int) -> Iterator[None]:
    """The caches see at most `limit` bytes free: a full disk, simulated."""
    def disk_usage(path):
        usage = shutil.disk_usage(path)
        return usage._replace(free=min(usage.free, limit))

    with pytest.MonkeyPatch.context() as patch:  # disk_space's view of shutil only
        patch.setattr(disk_space, "shutil", SimpleNamespace(disk_usage=disk_usage))
        yield


@contextlib.contextmanager
def from_environment() -> Iterator[None]:
    """The hooks whose knobs (`HOOK_VARIABLES`) are set, for the block."""
    with contextlib.ExitStack() as stack:
        if settings.kill_at_epoch():
            stack.enter_context(kill_at_epoch(settings.kill_at_epoch()))
        if settings.build_log():
            stack.enter_context(build_log(settings.build_log()))
        if settings.cache_unlocked():
            stack.enter_context(unlocked_cache_files())
        if settings.disk_limit_bytes() is not None:
            stack.enter_context(disk_limit(settings.disk_limit_bytes()))
        yield


if __name__ == "__main__":
    sys.argv[0] = "fer-search"
    with from_environment():
        entry()
