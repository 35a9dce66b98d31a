"""The Optuna storage, opened and closed: where a study lives, how its URL is shown, and how a
long-lived worker's storage differs from a one-shot command's.

SQLite (the default, one machine) and PostgreSQL (many machines) go through Optuna's RDBStorage
with heartbeats on: a trial whose process dies stops beating, is failed after the grace period and
re-queued in the same transaction (search.study.recovery.recover_lost).

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

Beside it: search.storage.retry (transient errors, retries, the resilient storage),
search.storage.locks (named locks), search.urls (password masking), search.tracking.store_check
(the MLflow store checks of one-shot commands).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search import settings
from search.errors import InputError, SearchError
from search.queue import schema
from search.storage import counts
from search.storage.engines import (
    SQLITE_MAGIC,
    begin_immediate,
    close_storage,
    engine_kwargs,
    root_message,
    sync_normal,
    write_ahead_log,
)
from search.storage.locks import named_lock
from search.storage.retry import ResilientRDBStorage
from search.urls import mask_text, mask_url

# Heartbeats and their retry callback are marked experimental; they are the documented way to
# recover trials of dead workers, which this project relies on.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

DEFAULT_STORAGE = "sqlite:///studies/optuna.db"
MAX_RETRY = 3
TABLES_LOCK = "optuna-tables"  # the lock `open_storage` holds while Optuna creates its tables



class StorageError(SearchError):
    """The storage URL is malformed or the database cannot be reached."""


def resolve_storage(flag: str | None, spec_value: str | None) -> str:
    """The storage URL in force: the --storage flag, then $FER_SEARCH_STORAGE, then the spec,
    then the embedded SQLite default."""
    return flag or settings.storage() or spec_value or DEFAULT_STORAGE


def open_storage(url: str, on_stale=None, *, read_only: bool = False,
                 resilient: bool = False) -> ResilientRDBStorage:
    """Opens the RDB storage at `url`, with heartbeats. Close it (`close_storage`, or use
    `storage_session`): its engine holds pooled connections until disposed.

    Args:
        on_stale: called with (study, trial) for each trial failed for want of a heartbeat
            by Optuna's `fail_stale_trials`; default: none. The study loop fails and re-queues
            stale trials itself (search.study.recovery.recover_lost: its one re-queue path)
            and does not call Optuna's.
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
        write_ahead_log(Path(parsed.database))

    # A worker beats every FER_SEARCH_HEARTBEAT_S seconds; one silent for FER_SEARCH_GRACE_S is
    # taken for dead. Read here, so that a malformed value is its own error, not the storage's.
    heartbeat_s, grace_s = settings.heartbeat_s(), settings.grace_s()
    retry_s = settings.db_retry_s()

    def create(skip_tables: bool = read_only) -> ResilientRDBStorage:
        return ResilientRDBStorage(
            url,
            engine_kwargs=kwargs,
            heartbeat_interval=heartbeat_s,
            grace_period=grace_s,
            heartbeat_stale_trial_callback=on_stale,
            skip_table_creation=skip_tables,
            skip_compatibility_check=True,  # `_check_schema`, without holding a connection
        )

    try:
        if read_only:
            storage = create()
        elif _ready(url, kwargs):  # a worker joining a running study: no lock to queue on
            storage = create(skip_tables=True)
        else:
            # Workers started together on a fresh database would race on CREATE TABLE.
            with named_lock(url, TABLES_LOCK, retry_s=0):
                storage = create()
                counts.ensure_index(storage.engine)  # the counts' read of Optuna's trials
                schema.upgrade(storage)  # the queue's own tables (search.queue)
        _check_schema(storage)
    except Exception as exc:  # driver missing, host unreachable, bad credentials ...
        raise _open_error(url, exc) from None
    storage.retry_s = retry_s if resilient else 0.0
    if sqlite:
        begin_immediate(storage.engine)
        if on_disk:
            sync_normal(storage.engine)
    return storage


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


def _check_schema(storage: ResilientRDBStorage) -> None:
    """Optuna's schema check, one connection at a time. Optuna's own holds a transaction open
    on one connection while it reads the schema version on a second: through PgBouncer, as many
    workers starting at once as the pool has connections each held one and waited for another,
    and nobody got one (benchmarks/results/storage_load.md).

    Raises:
        RuntimeError: the tables were made by another Optuna version (Optuna's own words).
    """
    current, head = storage.get_current_version(), storage.get_head_version()
    if current != head:
        raise RuntimeError(
            f"The runtime optuna version {optuna.__version__} is no longer compatible with the "
            f"table schema (version {current}, expected {head}); `optuna storage upgrade "
            f"--storage URL` upgrades it.")


def _ready(url: str, engine_kwargs: dict[str, Any]) -> bool:
    """Whether the store holds every table and index `open_storage` creates, stamped: then a
    worker opens it without the tables lock (which many workers starting at once would queue
    on). False: the locked path creates what is missing.

    Raises:
        InputError, StorageError: the database cannot be reached (as `open_storage`).
    """
    engine = create_engine(url, **engine_kwargs)
    try:
        found = inspect(engine)
        return (all(found.has_table(t) for t in ("studies", "trials", "version_info",
                                                  "alembic_version"))
                and any(index["name"] == counts.TRIALS_INDEX
                        for index in found.get_indexes("trials"))
                and all(_has_rows(engine, t) for t in ("version_info", "alembic_version"))
                and schema.version(engine) == schema.VERSION)
    except Exception as exc:
        raise _open_error(url, exc) from None
    finally:
        engine.dispose()


def _has_rows(engine, table: str) -> bool:
    with engine.connect() as connection:
        return connection.execute(text(f"SELECT 1 FROM {table} LIMIT 1")).first() is not None


def _open_error(url: str, error: BaseException) -> SearchError:
    """One line naming the URL (password masked) and the driver's cause. A database that does
    not exist, or a file that is not one, is bad input (exit 2); the rest is a failure (1)."""
    cause = mask_text(root_message(error), url)
    text = f"storage: cannot open {mask_url(url)}: {cause}"
    lowered = cause.lower()
    if any(marker in lowered for marker in _MISSING_TEXT):
        return InputError(text)
    return StorageError(text)


# Driver messages saying the store named by the URL is not there or not a database.
_MISSING_TEXT = ("does not exist", "file is not a database", "unable to open database file")


def load_study_named(name: str, storage, where: str = "the storage") -> optuna.Study:
    """The study `name` in `storage`, or an `InputError` naming `where` (a masked URL, or "the
    storage") and the studies it does hold."""
    names = optuna.get_all_study_names(storage)
    if name not in names:
        raise InputError(f"no study named {name!r} in {where}; studies there: "
                         f"{', '.join(sorted(names)) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)
