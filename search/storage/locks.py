"""Named locks every process sharing a storage sees: a file lock beside a SQLite file, an
advisory lock in PostgreSQL. Study set-up, the study run, promotion and the builds of a shared
cache folder's crops and features are serialised with them.

PostgreSQL's lock is transaction-held (`pg_try_advisory_xact_lock` in a transaction kept open
while the lock is held, released by its COMMIT or by a cut connection), never session-held:
through PgBouncer in transaction pooling (the compose `pgbouncer` service, tests/infra/pgbouncer.py)
a session lock would stay
on whichever server connection ran it, held for nobody. A waiter polls with short transactions
(backing off from 10 ms to 0.25 s) instead of blocking inside one: a blocked waiter would hold a
server connection of the proxy's small pool, and enough of them would leave the holder none to
finish its work with."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.storage.engines import engine_kwargs
from search.storage.retry import retry_transient


def study_lock(url: str, study_name: str) -> contextlib.AbstractContextManager[None]:
    """Serialises study set-up (create, fail stale trials, fill the grid queue) across processes
    that share the storage: a file lock beside a SQLite file, an advisory lock in PostgreSQL."""
    return named_lock(url, study_name)


def holds_locks(url: str) -> bool:
    """Whether `named_lock` locks anything in the storage at `url`: a SQLite file or PostgreSQL
    (not an in-memory database, nor another backend)."""
    try:
        parsed = make_url(url)
    except ArgumentError:  # not a database URL: nothing of ours to lock in
        return False
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return bool(parsed.database) and parsed.database != ":memory:"
    return backend == "postgresql"


def cache_lock(url: str) -> Callable[[str], contextlib.AbstractContextManager[None]] | None:
    """The trainer's `CacheLock` (`trainer.files.cache_lock`) for workers sharing the storage at
    `url`: a crop cache or feature set is built by one of them, under the lock named
    ``cache/<entry>``, whichever machine each runs on; the others wait for it, then read.
    None where the storage holds no locks (the trainer then keeps its file locks)."""
    if not holds_locks(url):
        return None
    return functools.partial(_cache_entry_lock, url)


def _cache_entry_lock(url: str, name: str) -> contextlib.AbstractContextManager[None]:
    # One per crop cache and feature set: beside a SQLite file they go in one folder
    # (optuna.db.cache/), not loose beside the database. A worker holds one at a time.
    return named_lock(url, f"cache/{name}")


@contextlib.contextmanager
def named_lock(url: str, name: str, retry_s: float | None = None) -> Iterator[None]:
    """A lock named `name` that every process sharing the storage at `url` sees: a file lock
    beside a SQLite file, an advisory lock in PostgreSQL, nothing for an in-memory database.

    Args:
        name: the lock's name; a '/' in it puts a SQLite lock file in a folder beside the
            database (``cache/x``: ``optuna.db.cache/x.lock``).
        retry_s: how long to retry connecting through an outage (default FER_SEARCH_DB_RETRY_S;
            0 for a first connection, which fails at once).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and holds_locks(url):
        lock_path = Path(f"{parsed.database}.{name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        with _advisory_lock(url, name, retry_s):
            yield
    else:  # in-memory or another backend: one process, nothing to serialise
        yield


@contextlib.contextmanager
def _advisory_lock(url: str, name: str, retry_s: float | None) -> Iterator[None]:
    """The PostgreSQL lock of `named_lock`: held by an open transaction of its own connection."""
    key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
    engine = create_engine(url, **engine_kwargs(url))
    try:
        with retry_transient(engine.connect, what=f"lock {name}", url=url,
                             deadline_s=retry_s) as connection:
            pause = 0.01
            while True:
                transaction = connection.begin()
                if connection.execute(text("SELECT pg_try_advisory_xact_lock(:k)"),
                                      {"k": key}).scalar():
                    break
                transaction.rollback()
                time.sleep(pause * random.uniform(0.5, 1.5))
                pause = min(pause * 2, 0.25)
            try:
                yield
            finally:
                # A connection cut meanwhile (server restarted) released the lock already.
                with contextlib.suppress(Exception):
                    transaction.commit()
    finally:
        engine.dispose()
