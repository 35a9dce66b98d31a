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
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import random
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import optuna
from optuna.trial import TrialState
from sqlalchemy import create_engine, event, inspect
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
# How long a worker keeps retrying a storage call that failed for a transient reason (a server
# restart, a cut connection, SQLite busy) before giving up.
DB_RETRY_S = float(os.environ.get("FER_SEARCH_DB_RETRY_S", "300"))
SQLITE_BUSY_TIMEOUT_S = 60
CONNECT_TIMEOUT_S = 5  # an unreachable PostgreSQL host fails a command in this many seconds
TABLES_LOCK = "optuna-tables"  # the lock `open_storage` holds while Optuna creates its tables

logger = logging.getLogger(__name__)
T = TypeVar("T")


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
    engine_kwargs = _engine_kwargs(url)
    if read_only:
        _require_optuna_tables(url, engine_kwargs)
    elif on_disk:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)

    def create() -> ResilientRDBStorage:
        return ResilientRDBStorage(
            url,
            engine_kwargs=engine_kwargs,
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
    engine = create_engine(url, **_engine_kwargs(url))
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
        if head and head != _SQLITE_MAGIC:
            raise InputError(f"storage: {mask_url(url)}: {path} is not a SQLite database file")
    elif read_only:
        raise InputError(f"storage: {mask_url(url)} does not exist (no file {path}); this "
                         f"command only reads a storage and never creates one: check the URL")


def _require_optuna_tables(url: str, engine_kwargs: dict[str, Any]) -> None:
    """A read-only command's store must hold Optuna's tables (a new empty database does not);
    checked on an engine of our own before Optuna's, which would create them."""
    engine = create_engine(url, **engine_kwargs)
    try:
        has_tables = inspect(engine).has_table("studies")
    except Exception as exc:
        raise _open_error(url, exc) from None
    finally:
        engine.dispose()
    if not has_tables:
        raise InputError(f"storage: {mask_url(url)} holds no Optuna study tables (an empty "
                         f"database?); this command only reads a storage and never creates one")


def _open_error(url: str, error: BaseException) -> SearchError:
    """One line naming the URL (password masked) and the driver's cause. A database that does
    not exist, or a file that is not one, is bad input (exit 2); the rest is a failure (1)."""
    cause = mask_url_in_text(_root_message(error), url)
    text = f"storage: cannot open {mask_url(url)}: {mask_url_secrets_in(cause)}"
    lowered = cause.lower()
    if any(marker in lowered for marker in _MISSING_TEXT):
        return InputError(text)
    return StorageError(text)


_SQLITE_MAGIC = b"SQLite format 3\x00"
# Driver messages saying the store named by the URL is not there or not a database.
_MISSING_TEXT = ("does not exist", "file is not a database", "unable to open database file")


def _engine_kwargs(url: str) -> dict[str, Any]:
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


# ------------------------------------------------------------------------------------- retries


_TRANSIENT_TEXT = (
    "database is locked", "server closed the connection", "terminating connection",
    "connection refused", "could not connect", "connection timed out", "timeout expired",
    "the database system is", "connection already closed", "ssl connection has been closed",
    "deadlock detected", "could not serialize access", "connection reset", "broken pipe",
    "no connection to the server", "server conn crashed", "connection to server at",
)
# Connection errors that no wait will fix: fail at once rather than retry for minutes.
_PERMANENT_TEXT = (
    "password authentication failed", "does not exist", "no pg_hba.conf entry",
    "permission denied", "could not translate host name", "authentication failed",
    "file is not a database", "unable to open database file", "no such table",
)


def is_transient(error: BaseException) -> bool:
    """True for database errors that a later attempt may not meet: a restarted or unreachable
    server, a cut connection, a deadlock, SQLite busy. Optuna wraps them in
    `StorageInternalError`; the cause chain is searched."""
    from sqlalchemy import exc as sa

    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(marker in text for marker in _PERMANENT_TEXT):
            return False
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
            return True
        if any(marker in text for marker in _TRANSIENT_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_transient(
    call: Callable[[], T],
    *,
    what: str = "a storage call",
    deadline_s: float | None = None,
    url: str | None = None,
) -> T:
    """Runs `call`, retrying with exponential backoff (0.5 s doubling to 10 s, jittered) while
    it fails with a transient database error, for at most `deadline_s` (FER_SEARCH_DB_RETRY_S).

    Each retry is logged as one warning line, with any password of `url` masked.
    """
    deadline = time.monotonic() + (DB_RETRY_S if deadline_s is None else deadline_s)
    delay = 0.5
    while True:
        try:
            return call()
        except Exception as error:
            if not is_transient(error) or time.monotonic() + delay > deadline:
                raise
            reason = " ".join(f"{type(error).__name__}: {_root_message(error)}".split())[:200]
            if url:
                reason = mask_url_in_text(reason, url)
            logger.warning("database unavailable during %s (%s); retrying in %.1f s", what,
                           mask_url_secrets_in(reason), delay)
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 10.0)


def _root_message(error: BaseException) -> str:
    """The first line of the deepest cause (the driver's own words), or the error's type."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip()
    return text.splitlines()[0].strip() if text else type(cause).__name__


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls survive a database restart or a busy SQLite file.

    Every method that reaches the database is retried by `retry_transient`; only the outermost
    call of a thread retries (Optuna's methods call each other), so one logical operation
    never multiplies its waits.

    A claim (WAITING -> RUNNING) also records the trial's first heartbeat at once: Optuna fails
    only RUNNING trials that have a heartbeat, so a worker dying between its claim and its first
    beat would otherwise leave the trial RUNNING forever, and a grid study waiting for it.
    """

    _depth = threading.local()
    retry_s = 0.0  # set by open_storage: DB_RETRY_S for a resilient storage

    def record_heartbeat_once(self, trial_id: int) -> None:
        """One heartbeat, never retried: a missed beat is harmless (the next one comes an
        interval later), and a beat stuck in retries would hold up the trial's end."""
        optuna.storages.RDBStorage.record_heartbeat(self, trial_id)

    def close(self) -> None:
        close_storage(self)

    def __enter__(self) -> ResilientRDBStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values=None) -> bool:
        attempts = 0

        def change() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                return optuna.storages.RDBStorage.set_trial_state_values(self, trial_id, state,
                                                                         values)
            except optuna.exceptions.UpdateFinishedTrialError:
                # A retry may find the trial finished by our own first attempt, whose commit
                # landed before its connection died: the same state and values are a success.
                if attempts > 1 and self._finished_as(trial_id, state, values):
                    return True
                raise

        changed = self._retrying(change, "set_trial_state_values")
        # After a retried claim the first attempt may have committed before its connection
        # died: then "not claimed" is ours, with no heartbeat. Beating it is harmless if it is
        # another worker's (it beats too) and lets it go stale if it was ours.
        if state == TrialState.RUNNING and self.heartbeat_interval and (changed or attempts > 1):
            self.record_heartbeat(trial_id)
        return changed

    def _finished_as(self, trial_id: int, state: TrialState, values) -> bool:
        trial = optuna.storages.RDBStorage.get_trial(self, trial_id)
        return trial.state == state and (values is None or list(trial.values or []) == list(values))

    def _create_new_trial(self, study_id: int, template_trial=None):
        trial = self._retrying(
            lambda: optuna.storages.RDBStorage._create_new_trial(self, study_id, template_trial),
            "create_new_trial")
        if trial.state == TrialState.RUNNING and self.heartbeat_interval:
            self.record_heartbeat(trial._trial_id)  # as for a claim: beat from the start
        return trial

    def _retrying(self, call: Callable[[], T], name: str) -> T:
        depth = getattr(self._depth, "value", 0)
        if depth or not self.retry_s:
            return call()
        self._depth.value = depth + 1
        try:
            return retry_transient(call, what=name, url=self.url, deadline_s=self.retry_s)
        finally:
            self._depth.value = depth


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: method(self, *args, **kwargs), name)

    return wrapper


# Every RDBStorage method that reaches the database (Optuna's _CachedStorage calls the private
# ones directly).
for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param",
    "_set_trial_param", "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "_get_trials", "get_best_trial", "_get_best_trial_id", "record_heartbeat",
    "_get_stale_trial_ids", "get_current_version", "get_head_version",
):
    setattr(ResilientRDBStorage, _name, _retried(_name))


def mask_url_in_text(text: str, url: str) -> str:
    """Removes `url`'s password from a driver's error message: only where it stands as a
    password (`:password@`), never every occurrence of its letters (a password `o` must not
    turn "connection refused" into "c***nnecti***n refused")."""
    try:
        password = make_url(url).password
    except ArgumentError:
        password = None
    if not password:
        return text
    for form in {str(password), quote(str(password), safe="")}:
        text = text.replace(f":{form}@", ":***@")
    return text


def study_lock(url: str, study_name: str) -> contextlib.AbstractContextManager[None]:
    """Serialises study set-up (create, fail stale trials, fill the grid queue) across processes
    that share the storage: a file lock beside a SQLite file, an advisory lock in PostgreSQL."""
    return named_lock(url, study_name)


@contextlib.contextmanager
def named_lock(url: str, name: str, retry_s: float | None = None) -> Iterator[None]:
    """A lock named `name` that every process sharing the storage at `url` sees: a file lock
    beside a SQLite file, an advisory lock in PostgreSQL, nothing for an in-memory database.

    Args:
        retry_s: how long to retry connecting through an outage (default FER_SEARCH_DB_RETRY_S;
            0 for a first connection, which fails at once).
    """
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        lock_path = Path(f"{parsed.database}.{name}.lock")
        with open(lock_path, "a+") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
    elif backend == "postgresql":
        from sqlalchemy import text

        key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)
        engine = create_engine(url, **_engine_kwargs(url))
        try:
            with retry_transient(engine.connect, what=f"lock {name}", url=url,
                                 deadline_s=retry_s) as connection:
                connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
                try:
                    yield
                finally:
                    # A connection cut meanwhile (server restarted) released the lock already.
                    with contextlib.suppress(Exception):
                        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
        finally:
            engine.dispose()
    else:  # in-memory or another backend: one process, nothing to serialise
        yield


# `scheme://user:password@`: the password runs to the last '@' before the host's '/'.
_URL_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.-]*://[^:/@\s'\"]*):[^/\s'\"]*@")


def mask_url_secrets_in(text: str) -> str:
    """Masks the password of every URL inside free text (error messages): the URL's own
    password field only, found by the URL's structure; the rest of the text is untouched."""
    return _URL_USERINFO.sub(lambda m: f"{m.group('head')}:***@", text)


# ------------------------------------------------------------ tracking stores, for one-shot use


TRACKING_PROBE_S = 5.0  # a tracking server that does not answer /health in this long is down


class TrackingStoreError(SearchError):
    """The MLflow tracking server cannot be reached."""


def require_tracking_store(uri: str) -> None:
    """Before a one-shot command (promote, fetch, predict, ui) touches the MLflow store at
    `uri`: it must exist and answer, or the command stops at once with one line.

    A local store (`sqlite:///...`, a folder) that does not exist is an `InputError` (MLflow
    would create it); a server is probed once at /health, without MLflow's retries (7 of them,
    minutes); and MLflow's own HTTP calls after it retry once, not for minutes.

    Raises:
        InputError: a local store that does not exist or is not a database file.
        TrackingStoreError: a server that refuses, times out or answers with an error.
    """
    import urllib.error
    import urllib.request

    masked = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        # The user's own settings win; a one-shot command fails rather than wait minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=TRACKING_PROBE_S):
                return
        except urllib.error.HTTPError as error:
            if error.code < 500:  # it answers (a proxy or an auth wall): let MLflow say more
                return
            reason = f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(getattr(error, "reason", error)) or type(error).__name__
        raise TrackingStoreError(f"tracking store: cannot reach {masked}: "
                                 f"{mask_url_secrets_in(reason)}")
    if uri.startswith("sqlite:"):
        database = make_url(uri).database
        if not database or database == ":memory:":
            return
        path = Path(database)
        if not path.is_file():
            kind = "a folder, not a database file" if path.is_dir() else f"no file {path}"
            raise InputError(f"tracking store: {masked} does not exist ({kind}); this command "
                             f"never creates one: check --tracking-uri / $MLFLOW_TRACKING_URI")
        with open(path, "rb") as handle:
            head = handle.read(16)
        if head != _SQLITE_MAGIC:
            raise InputError(f"tracking store: {masked}: {path} is not a SQLite database file")
        return
    if "://" not in uri or uri.startswith("file:"):  # a local folder store (mlruns/)
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise InputError(f"tracking store: {masked} does not exist (no folder {path}); this "
                             f"command never creates one: check --tracking-uri")


def _health_request(uri: str):
    """GET <uri>/health; a `user:password@` in the URL becomes basic auth, as MLflow sends it
    (urllib would take it for part of the host name)."""
    import base64
    import urllib.request
    from urllib.parse import unquote, urlsplit, urlunsplit

    parts = urlsplit(uri)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    path = parts.path.rstrip("/") + "/health"
    request = urllib.request.Request(urlunsplit((parts.scheme, netloc, path, "", "")))
    if parts.username is not None:
        token = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(token).decode())
    return request
