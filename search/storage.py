"""The Optuna storage: where a study lives, how its URL is shown, and a study-wide lock.

SQLite (the default, one machine) and PostgreSQL (many machines) go through Optuna's RDBStorage
with heartbeats on: a trial whose process dies stops beating, is failed after the grace period and
re-queued by `RetryHeartbeatStaleTrialCallback`.

Several workers at once:

- PostgreSQL: every storage call is retried with backoff on a transient error (server restarted,
  connection cut, deadlock), for up to FER_SEARCH_DB_RETRY_S seconds; pooled connections are
  pinged before use, so a restarted server costs a reconnect, not a failed trial.
- SQLite (several processes of one machine, `fer-search run --workers N`): Optuna's maintainers
  advise against SQLite for parallel work, because pysqlite opens a transaction only at the
  first write. Optuna's claim of a queued trial reads its state, then writes it: two processes
  could both read WAITING and both claim it, and a reader upgrading to a writer fails at once
  with `database is locked` instead of waiting. Here every transaction starts with
  `BEGIN IMMEDIATE` (the write lock first), so a claim is atomic and a second writer waits on
  the busy timeout instead of failing; what still fails as `database is locked` is retried like
  any transient error. We keep SQLite rather than a journal file because the rest of the
  toolchain (optuna-dashboard, `fer-search status`, the existing studies) reads the same URL.

A storage has a lifetime: `storage_session(url)` opens one and disposes its engine (its pooled
connections) on exit. A long-lived process (a worker's study loop, the dashboard) holds one; a
one-shot command opens and closes one. Opening never retries: the first connection of any
command fails in seconds with its cause. Only a storage opened `resilient=True` (a worker in a
study that has started) retries its calls through an outage; permanent errors never are.
A `read_only=True` storage must already exist: nothing (folder, file, table) is created.

Beside it: search.storage_retry (transient errors, retries, the resilient storage),
search.locks (named locks), search.urls (password masking), search.tracking_store (the MLflow
store checks of one-shot commands).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import create_engine, event, inspect, text
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
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5  # an unreachable PostgreSQL host fails a command in this many seconds
TABLES_LOCK = "optuna-tables"  # the lock `open_storage` holds while Optuna creates its tables



class StorageError(SearchError):
    """The storage URL is malformed or the database cannot be reached."""


def resolve_storage(flag: str | None, spec_value: str | None) -> str:
    """The storage URL in force: the --storage flag, then $FER_SEARCH_STORAGE, then the spec,
    then the embedded SQLite default."""
    return flag or os.environ.get(STORAGE_ENV) or spec_value or DEFAULT_STORAGE




def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite")


def open_storage(url: str, on_stale=None, *, read_only: bool = False,
                 resilient: bool = False) -> ResilientRDBStorage:
    """Opens the RDB storage at `url`, with heartbeats. Close it (`close_storage`, or use
    `storage_session`): its engine holds pooled connections until disposed.

    Args:
        on_stale: called with (study, trial) for each trial failed for want of a heartbeat;
            default: Optuna's retry callback, which re-queues it.
        read_only: the store must exist already (a command that only reads: status, studies,
            promote, dashboard); nothing is created, and a missing store is an `InputError`.
        resilient: retry storage calls through a database outage (for FER_SEARCH_DB_RETRY_S);
            for a worker whose study has started. Otherwise every call fails at its first error.

    Raises:
        InputError: a malformed URL, or a store that does not exist (or is not a database).
        StorageError: the database cannot be reached (refused, timed out, bad credentials).
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise InputError(
            f"storage: expected a database URL like {DEFAULT_STORAGE!r} or "
            f"'postgresql+psycopg2://user:password@host/db', but got {mask_url(url)!r}"
        ) from None
    sqlite = parsed.get_backend_name() == "sqlite"
    on_disk = sqlite and parsed.database and parsed.database != ":memory:"
    if on_disk:
        _check_sqlite_path(url, Path(parsed.database), read_only)
    kwargs = engine_kwargs(url)
    if read_only:
        _require_optuna_tables(url, kwargs)
    elif on_disk:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        _write_ahead_log(Path(parsed.database))

    def create() -> ResilientRDBStorage:
        return ResilientRDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=HEARTBEAT_S,
            grace_period=GRACE_S,
            heartbeat_stale_trial_callback=on_stale
            or optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY),
            skip_table_creation=read_only,
        )

    try:
        if read_only:
            storage = create()
        else:
            # Workers started together on a fresh database would race on CREATE TABLE.
            with named_lock(url, TABLES_LOCK, retry_s=0):
                storage = create()
    except Exception as exc:  # driver missing, host unreachable, bad credentials ...
        raise _open_error(url, exc) from None
    storage.retry_s = DB_RETRY_S if resilient else 0.0
    if sqlite:
        _begin_immediate(storage.engine)
        if on_disk:
            _sync_normal(storage.engine)
    return storage


def close_storage(storage) -> None:
    """Disposes `storage`'s engine: its pooled connections are closed now, not at exit.

    Optuna starts no heartbeat thread of its own here (only `Study.optimize` does, and this
    project beats through search.trial_runner, which stops its thread), so the engine is all.
    """
    engine = getattr(storage, "engine", None)
    if engine is None:  # an in-memory storage, or Optuna's cache around one
        backend = getattr(storage, "_backend", None)
        engine = getattr(backend, "engine", None)
        storage = backend if engine is not None else storage
    with contextlib.suppress(Exception):  # the session of this thread; others are returned
        storage.remove_session()
    if engine is not None:
        engine.dispose()


@contextlib.contextmanager
def storage_session(url: str, on_stale=None, *, read_only: bool = False,
                    resilient: bool = False) -> Iterator[ResilientRDBStorage]:
    """`open_storage(...)` for the length of a `with` block, closed (engine disposed) after."""
    storage = open_storage(url, on_stale, read_only=read_only, resilient=resilient)
    try:
        yield storage
    finally:
        close_storage(storage)


def check_reachable(url: str) -> None:
    """Before a study loads TensorFlow and its data: the storage at `url` can be used, or one
    line now. Creates nothing (a new SQLite file is made later, once the data is valid): a
    SQLite URL's path is checked; a server gets one connection, not retried, then closed.

    Raises:
        InputError, StorageError: as `open_storage`.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        return  # open_storage says what is wrong with it
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            _check_sqlite_path(url, Path(parsed.database), read_only=False)
        return
    engine = create_engine(url, **engine_kwargs(url))
    try:
        with engine.connect():
            pass
    except Exception as exc:
        raise _open_error(url, exc) from None
    finally:
        engine.dispose()


def _check_sqlite_path(url: str, path: Path, read_only: bool) -> None:
    """A SQLite URL names a database file: a folder or another kind of file is a mistake the
    user can fix (exit 2), and for a read-only command so is a file that does not exist."""
    if path.is_dir():
        raise InputError(f"storage: {mask_url(url)} names a folder, {path}; expected a SQLite "
                         f"database file")
    if path.is_file():
        with open(path, "rb") as handle:
            head = handle.read(16)
        if head and head != SQLITE_MAGIC:
            raise InputError(f"storage: {mask_url(url)}: {path} is not a SQLite database file")
    elif read_only:
        raise InputError(f"storage: {mask_url(url)} does not exist (no file {path}); this "
                         f"command only reads a storage and never creates one: check the URL")


def _require_optuna_tables(url: str, engine_kwargs: dict[str, Any]) -> None:
    """A read-only command's store must hold Optuna's tables (a new empty database does not);
    checked on an engine of our own before Optuna's, which would create them."""
    engine = create_engine(url, **engine_kwargs)
    try:
        found = inspect(engine)
        has_tables = found.has_table("studies")
        # Optuna stamps its schema version after creating the tables. A storage without the
        # stamp is still being created by another process, and opening it now would make this
        # reader stamp it too: the creator's stamp would then fail on a UNIQUE constraint.
        stamped = has_tables and all(
            found.has_table(table) and _has_rows(engine, table)
            for table in ("version_info", "alembic_version")
        )
    except Exception as exc:
        raise _open_error(url, exc) from None
    finally:
        engine.dispose()
    if not has_tables:
        raise InputError(f"storage: {mask_url(url)} holds no Optuna study tables (an empty "
                         f"database?); this command only reads a storage and never creates one")
    if not stamped:
        raise InputError(f"storage: {mask_url(url)} is still being created (Optuna's schema "
                         f"version is not recorded yet); try again in a moment")


def _has_rows(engine, table: str) -> bool:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None


def _open_error(url: str, error: BaseException) -> SearchError:
    """One line naming the URL (password masked) and the driver's cause. A database that does
    not exist, or a file that is not one, is bad input (exit 2); the rest is a failure (1)."""
    cause = mask_url_in_text(root_message(error), url)
    text = f"storage: cannot open {mask_url(url)}: {mask_url_secrets_in(cause)}"
    lowered = cause.lower()
    if any(marker in lowered for marker in _MISSING_TEXT):
        return InputError(text)
    return StorageError(text)


SQLITE_MAGIC = b"SQLite format 3\x00"
# Driver messages saying the store named by the URL is not there or not a database.
_MISSING_TEXT = ("does not exist", "file is not a database", "unable to open database file")


def engine_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # isolation_level=None: pysqlite opens no transaction of its own; `_begin_immediate`
        # opens every one (see the module's docstring). timeout: SQLite's busy timeout.
        return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S, "isolation_level": None}}
    # Survive a database restart: test each pooled connection before use.
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "postgresql" and parsed.get_driver_name() in ("psycopg2", "psycopg"):
        # libpq's options: give up on an unreachable host after seconds (then retry, or fail a
        # one-shot command), not the OS's minutes; notice a peer that vanished without closing
        # the connection.
        kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S, "keepalives": 1,
                                  "keepalives_idle": 30, "keepalives_interval": 10,
                                  "keepalives_count": 3}
    return kwargs


def _begin_immediate(engine) -> None:
    """Makes every transaction on `engine` (SQLite) take the write lock when it begins.

    SQLAlchemy's documented recipe for pysqlite: the driver's own transaction handling is off
    (isolation_level=None), and SQLAlchemy's `begin` event emits the BEGIN.
    """

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _write_ahead_log(path: Path) -> None:
    """Puts the SQLite database at `path` in WAL mode (stored in the file: once for all its
    users). A commit (a trial's per-epoch report, a heartbeat) then appends to the log, and with
    `_sync_normal` without an fsync: about half the time of a rollback-journal commit (2.4 ->
    1.2 ms per `trial.report` here); readers no longer block the writer. Best effort: a database
    another process holds open in the old mode keeps it (and full syncs)."""
    import sqlite3

    try:
        connection = sqlite3.connect(path, timeout=0.2, isolation_level=None)
    except sqlite3.Error:
        return  # open_storage reports what is wrong with the file
    try:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
            connection.execute("PRAGMA journal_mode = WAL")
    except sqlite3.Error:
        pass
    finally:
        connection.close()


def _sync_normal(engine) -> None:
    """synchronous=NORMAL on every connection of a WAL database: a killed process loses
    nothing; a power cut may lose the last commits but never the database (SQLite's documented
    guarantee for WAL + NORMAL), and a trial lost so is re-run after its heartbeat stops. A
    database in rollback-journal mode keeps FULL, where NORMAL would not be safe."""

    @event.listens_for(engine, "connect")
    def _connect(connection, record) -> None:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            connection.execute("PRAGMA synchronous = NORMAL")

    engine.dispose()  # connections opened while Optuna set up get the setting too


# ------------------------------------------------------------------------------------- retries

# Re-exported: callers import these from here (the storage's URL masking, locks and retries).
from search.locks import named_lock, study_lock  # noqa: E402, F401
from search.storage_retry import (  # noqa: E402, F401
    DB_RETRY_S,
    ResilientRDBStorage,
    is_transient,
    retry_transient,
    root_message,
)
from search.urls import mask_url, mask_url_in_text, mask_url_secrets_in  # noqa: E402, F401
