"""SQLAlchemy engines for Optuna's storages: connection settings per backend, SQLite's
transaction mode, and disposing an engine. The lowest module of `search.storage`: locks, retries
and sessions all build on it."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url

SQLITE_BUSY_TIMEOUT_S = 60
SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
CONNECT_TIMEOUT_S = 5  # an unreachable PostgreSQL host fails a command in this many seconds


def engine_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # isolation_level=None: pysqlite opens no transaction of its own; `begin_immediate`
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


def begin_immediate(engine) -> None:
    """Makes every transaction on `engine` (SQLite) take the write lock when it begins.

    SQLAlchemy's documented recipe for pysqlite: the driver's own transaction handling is off
    (isolation_level=None), and SQLAlchemy's `begin` event emits the BEGIN.
    """

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def write_ahead_log(path: Path) -> None:
    """Puts the SQLite database at `path` in WAL mode (stored in the file: once for all its
    users). A commit (a trial's per-epoch report, a heartbeat) then appends to the log, and with
    `sync_normal` without an fsync: about half the time of a rollback-journal commit (2.4 ->
    1.2 ms per `trial.report` here); readers no longer block the writer. Best effort: a database
    another process holds open in the old mode keeps it (and full syncs)."""
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


def sync_normal(engine) -> None:
    """synchronous=NORMAL on every connection of a WAL database: a killed process loses
    nothing; a power cut may lose the last commits but never the database (SQLite's documented
    guarantee for WAL + NORMAL), and a trial lost so is re-run after its heartbeat stops. A
    database in rollback-journal mode keeps FULL, where NORMAL would not be safe."""

    @event.listens_for(engine, "connect")
    def _connect(connection, record) -> None:
        if connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            connection.execute("PRAGMA synchronous = NORMAL")

    engine.dispose()  # connections opened while Optuna set up get the setting too




def close_storage(storage) -> None:
    """Disposes `storage`'s engine: its pooled connections are closed now, not at exit.

    Optuna starts no heartbeat thread of its own here (only `Study.optimize` does, and this
    project beats through search.trial.runner, which stops its thread), so the engine is all.
    """
    engine = getattr(storage, "engine", None)  # None: not an RDB storage (in memory)
    with contextlib.suppress(Exception):  # the session of this thread; others are returned
        storage.remove_session()
    if engine is not None:
        engine.dispose()


def root_message(error: BaseException) -> str:
    """The first line of the deepest cause (the driver's own words), or the error's type."""
    cause = error
    while cause.__cause__ is not None:
        cause = cause.__cause__
    text = str(cause).strip()
    return text.splitlines()[0].strip() if text else type(cause).__name__
