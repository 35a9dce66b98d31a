"""A fresh local MLflow store (``sqlite:///...``), created once, atomically, without migrations.

MLflow creates a missing SQLite store by running its ~50 alembic migrations (about 2 s), and two
processes doing so at once on the same file crash ("Online migration expected to match one row
... in 'alembic_version'"): two workers starting a study together is the normal case.
So a missing store is made here instead:

1. a template database is built once per MLflow version (MLflow migrates a private temp file)
   and kept under the user's cache folder, ``<cache>/fer-search/mlflow-store/<version>.db``;
2. under an exclusive lock beside the store (``<store>.lock``), whoever finds the store still
   missing copies the template to a temp file there, points its Default experiment's artifact
   location where MLflow itself would have, and renames it into place.

Readers therefore see no store or a complete one, never a half-migrated one. Where no template
can be made (a read-only home), the store is still created under the lock, by MLflow itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

from search import settings
from trainer.files.atomic import fsync_dir
from trainer.files.lock import file_lock

# MLflow is imported where first used: search.tracking.runs imports this module, and `run` and
# `worker` read the spec and check both stores before paying for MLflow's import (~2.3 s here).

logger = logging.getLogger(__name__)

# The placeholder artifact root the template is built with; rewritten in every copy.
_TEMPLATE_ROOT = "file:///fer-search-template-artifacts"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI; None for other stores and in-memory
    databases."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def ensure_sqlite_store(tracking_uri: str) -> bool:
    """Creates the SQLite store of ``tracking_uri`` if it does not exist; safe to call from many
    processes at once.

    Returns:
        True when this call created the store, False when it existed (or the URI is no local
        SQLite file).
    """
    path = sqlite_path(tracking_uri)
    if path is None or _is_store(path):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(path.with_name(path.name + ".lock")):
        if _is_store(path):  # made by whoever held the lock before us
            return False
        template = _template()
        if template is None:
            _migrate(f"sqlite:///{path}", _artifact_root())
        else:
            _copy_template(template, path)
    return True


def _is_store(path: Path) -> bool:
    # An empty file is what sqlite leaves after a failed first connect: not a store yet.
    try:
        return path.stat().st_size > 0
    except OSError:  # missing, or a parent is no folder
        return False


def template_path() -> Path:
    """Where this MLflow version's template lives (``$FER_SEARCH_MLFLOW_TEMPLATE_DIR`` or the
    user cache folder)."""
    root = settings.mlflow_template_dir()
    if root is None:
        cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(cache) / "fer-search" / "mlflow-store")
    return Path(root) / f"mlflow-{version('mlflow')}.db"


def _template() -> Path | None:
    """This MLflow version's migrated template, built on first use; None if it cannot be made."""
    path = template_path()
    if _is_store(path):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with file_lock(path.with_name(path.name + ".lock")):
            if not _is_store(path):
                fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
                os.close(fd)
                os.unlink(tmp)  # MLflow must find no file: it creates and migrates it
                try:
                    _migrate(f"sqlite:///{tmp}", _TEMPLATE_ROOT)
                    os.replace(tmp, path)
                finally:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                fsync_dir(path.parent)
    except OSError as err:
        logger.info("no MLflow store template at %s (%s); migrating in place", path, err)
        return None
    return path


def _migrate(uri: str, artifact_root: str) -> None:
    """Lets MLflow create and migrate the store at ``uri`` (tables and Default experiment)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for name in ("mlflow", "alembic"):  # "Creating initial MLflow database tables...": noise
        logging.getLogger(name).setLevel(logging.WARNING)
    store = SqlAlchemyStore(uri, artifact_root)
    store.engine.dispose()  # release the file before it is copied or renamed


def _artifact_root() -> str:
    """The artifact root MLflow gives a local store opened without one (``./mlruns``)."""
    from mlflow.store.tracking import DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH
    from mlflow.utils.uri import resolve_uri_if_local

    return resolve_uri_if_local(DEFAULT_LOCAL_FILE_AND_ARTIFACT_PATH)


def _copy_template(template: Path, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        shutil.copyfile(template, tmp)
        now = int(time.time() * 1000)
        root = _artifact_root().rstrip("/")
        with contextlib.closing(sqlite3.connect(tmp)) as db, db:
            db.execute(
                "UPDATE experiments SET artifact_location = ?, creation_time = ?, "
                "last_update_time = ? WHERE experiment_id = 0",
                (f"{root}/0", now, now),
            )
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    fsync_dir(path.parent)
