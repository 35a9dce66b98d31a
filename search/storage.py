"""The Optuna storage: where a study lives, how its URL is shown, and a study-wide lock.

SQLite (the default, one machine) and PostgreSQL (many machines) go through Optuna's RDBStorage
with heartbeats on: a trial whose process dies stops beating, is failed after the grace period and
re-queued by `RetryHeartbeatStaleTrialCallback`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import optuna
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.errors import InputError, SearchError

# Heartbeats and their retry callback are marked experimental; they are the documented way to
# recover trials of dead workers, which this project relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
STORAGE_ENV = "FER_SEARCH_STORAGE"
# A worker beats every HEARTBEAT_S seconds; one silent for GRACE_S is taken for dead. Overridable
# for tests that kill workers on purpose.
HEARTBEAT_S = int(os.environ.get("FER_SEARCH_HEARTBEAT_S", "10"))
GRACE_S = int(os.environ.get("FER_SEARCH_GRACE_S", "60"))
MAX_RETRY = 3


class StorageError(SearchError):
    """The storage URL is malformed or the database cannot be reached."""


def resolve_storage(flag: str | None, spec_value: str | None) -> str:
    """The storage URL in force: the --storage flag, then $FER_SEARCH_STORAGE, then the spec,
    then the embedded SQLite default."""
    return flag or os.environ.get(STORAGE_ENV) or spec_value or DEFAULT_STORAGE


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, for anything printed, logged or tracked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        from search.spec import mask_url_secrets

        return mask_url_secrets(url)


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def open_storage(url: str, on_stale=None) -> optuna.storages.RDBStorage:
    """Opens (creating tables on first use) the RDB storage at `url`, with heartbeats.

    Args:
        on_stale: called with (study, trial) for each trial failed for want of a heartbeat;
            default: Optuna's retry callback, which re-queues it.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(
            f"storage: expected a database URL like {DEFAULT_STORAGE!r} or "
            f"'postgresql+psycopg2://user:password@host/db', but got {mask_url(url)!r}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database or ""
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        # Several local processes may write at once: wait for the lock rather than fail.
        engine_kwargs = {"connect_args": {"timeout": 60}}
    else:
        # Survive a database restart: test each pooled connection before use.
        engine_kwargs = {"pool_pre_ping": True}
    try:
        return optuna.storages.RDBStorage(
            url,
            engine_kwargs=engine_kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale
            or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
        )
    except Exception as exc:  # driver missing, host unreachable, bad credentials ...
        raise StorageError(
            f"storage: cannot open {mask_url(url)}: {type(exc).__name__}: "
            f"{mask_url_in_text(str(exc).splitlines()[0] if str(exc) else '', url)}"
        ) from None


def mask_url_in_text(text: str, url: str) -> str:
    """Removes `url`'s password from a driver's error message."""
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    return text.replace(password, "***") if password else text


@contextlib.contextmanager
def study_lock(url: str, study_name: str) -> Iterator[None]:
    """Serialises study set-up (create, fail stale trials, fill the grid queue) across processes
    that share the storage: a file lock beside a SQLite file, an advisory lock in PostgreSQL."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        lock_path = Path(f"{parsed.database}.{study_name}.lock")
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        from sqlalchemy import create_engine, text

        key = int.from_bytes(hashlib.sha256(study_name.encode()).digest()[:8], "big", signed=True)
        engine = create_engine(url, pool_pre_ping=True)
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    else:  # in-memory or another backend: one process, nothing to serialise
        yield


def mask_url_secrets_in(text: str) -> str:
    """Masks the password of any database URL inside free text (error messages)."""
    from search.spec import mask_url_secrets

    return mask_url_secrets(text)
