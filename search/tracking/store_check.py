"""The MLflow tracking store, checked before a one-shot command touches it: a local store must
exist, a server must answer, and neither may keep a command waiting for minutes."""

from __future__ import annotations

import base64
import os
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from sqlalchemy import create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from search.errors import InputError, SearchError
from search.storage.engines import SQLITE_MAGIC, engine_kwargs, root_message
from search.urls import mask_text, mask_url

TRACKING_PROBE_S = 5.0  # a tracking server that does not answer /health in this long is down
# Database URIs MLflow accepts as a tracking store besides SQLite (a server, probed by connecting).
DATABASE_BACKENDS = ("postgresql", "mysql", "mssql")


class TrackingStoreError(SearchError):
    """The MLflow tracking server cannot be reached."""


def require_tracking_store(uri: str) -> None:
    """Before a one-shot command (promote, fetch, predict, ui) touches the MLflow store at
    `uri`: it must exist and answer, or the command stops at once with one line.

    A local store (`sqlite:///...`, a folder) that does not exist is an `InputError` (MLflow
    would create it); a server is probed once (`check_tracking_server`: /health, without
    MLflow's retries, 7 of them, minutes; a database server by one connection with a connect
    timeout); and MLflow's own HTTP calls after it retry once, not for minutes.

    Raises:
        InputError: a local store that does not exist or is not a database file.
        TrackingStoreError: a server that refuses, times out or answers with an error.
    """
    masked = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        # The user's own settings win; a one-shot command fails rather than wait minutes.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    if check_tracking_server(uri):
        return
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
        if head != SQLITE_MAGIC:
            raise InputError(f"tracking store: {masked}: {path} is not a SQLite database file")
        return
    if "://" not in uri or uri.startswith("file:"):  # a local folder store (mlruns/)
        path = Path(uri.removeprefix("file://").removeprefix("file:"))
        if not path.is_dir():
            raise InputError(f"tracking store: {masked} does not exist (no folder {path}); this "
                             f"command never creates one: check --tracking-uri")


def check_tracking_server(uri: str) -> bool:
    """A tracking store behind a server answers now, or one line within seconds: an
    `http(s)://` server gets one GET of /health (no MLflow retries), a database server
    (`postgresql://`, `mysql://`, `mssql://`) one connection with a connect timeout. A local
    store (SQLite file, folder) is not looked at. Changes no MLflow setting: a study that has
    started still rides out a later outage with MLflow's own retries.

    `run` and `worker` call it before the data and TensorFlow; `require_tracking_store` (the
    one-shot commands) calls it first.

    Returns:
        True when `uri` names a server and it answered; False for a local store.

    Raises:
        TrackingStoreError: a server that refuses, times out or answers with an error.
    """
    masked = mask_url(uri)
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(_health_request(uri), timeout=TRACKING_PROBE_S):
                return True
        except urllib.error.HTTPError as error:
            if error.code < 500:  # it answers (a proxy or an auth wall): let MLflow say more
                return True
            reason = f"HTTP {error.code} {error.reason}"
        except (urllib.error.URLError, OSError) as error:
            reason = str(getattr(error, "reason", error)) or type(error).__name__
        raise TrackingStoreError(f"tracking store: cannot reach {masked}: "
                                 f"{mask_text(reason, uri)}")
    if _database_backend(uri) is None:
        return False
    try:
        # engine_kwargs: psycopg2's connect_timeout, so an unreachable host fails in seconds.
        engine = create_engine(uri, **engine_kwargs(uri))
        try:
            with engine.connect():
                return True
        finally:
            engine.dispose()
    except Exception as error:  # refused, timed out, bad credentials, driver missing ...
        reason = root_message(error)
        raise TrackingStoreError(f"tracking store: cannot reach {masked}: "
                                 f"{mask_text(reason, uri)}") from None


def _database_backend(uri: str) -> str | None:
    """The SQLAlchemy backend of a database-server tracking URI, else None."""
    if "://" not in uri:
        return None
    try:
        backend = make_url(uri).get_backend_name()
    except (ArgumentError, ValueError):
        return None
    return backend if backend in DATABASE_BACKENDS else None


def _health_request(uri: str):
    """GET <uri>/health; a `user:password@` in the URL becomes basic auth, as MLflow sends it
    (urllib would take it for part of the host name)."""
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
