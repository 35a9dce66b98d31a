#!/usr/bin/env python3
"""The MLflow tracking server with its login: `mlflow server --app-name basic-auth ARGS...`.

Used by the compose `mlflow` service and the Kubernetes `mlflow` Deployment (after
fer-search-secrets, which turns the *_FILE secrets into the variables MLflow reads and writes the
database password into PGPASSFILE). Before it starts the server it:

1. writes MLflow's auth settings (MLFLOW_AUTH_CONFIG_PATH) into FER_SEARCH_RUNTIME_DIR: the user
   store in PostgreSQL (MLFLOW_AUTH_DATABASE_URI, no password in it: libpq reads PGPASSFILE),
   the admin's name (MLFLOW_AUTH_ADMIN_USERNAME, default `admin`; the password comes from
   MLFLOW_AUTH_ADMIN_PASSWORD), and what a logged-in user may do by default
   (MLFLOW_AUTH_DEFAULT_PERMISSION, default READ);
2. creates the workers' user (FER_MLFLOW_WORKER_USERNAME, password from the file
   FER_MLFLOW_WORKER_PASSWORD_FILE), not an admin, or sets its password when the file changed.
   Workers and the promote Job log in as that user (MLFLOW_TRACKING_USERNAME and
   MLFLOW_TRACKING_PASSWORD_FILE); the experiments and models they create are theirs (MANAGE),
   everyone else who logs in reads them (the default permission).

MLflow itself creates the admin on an empty user store and refuses to start without its password
or without MLFLOW_FLASK_SERVER_SECRET_KEY. Nothing here prints a password.
"""

from __future__ import annotations

import configparser
import os
import sys
from pathlib import Path

PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")


def fail(message: str) -> None:
    print(f"fer-mlflow-server: {message}", file=sys.stderr)
    raise SystemExit(2)


def write_auth_config(runtime: Path) -> Path:
    database = os.environ.get("MLFLOW_AUTH_DATABASE_URI", "")
    if not database:
        fail("MLFLOW_AUTH_DATABASE_URI is not set (the user store, e.g. "
             "postgresql+psycopg2://fer_mlflow@postgres:5432/mlflow_auth)")
    permission = os.environ.get("MLFLOW_AUTH_DEFAULT_PERMISSION", "READ")
    if permission not in PERMISSIONS:
        fail(f"MLFLOW_AUTH_DEFAULT_PERMISSION: expected one of {', '.join(PERMISSIONS)}, "
             f"found {permission!r}")
    config = configparser.ConfigParser(interpolation=None)
    config["mlflow"] = {
        "default_permission": permission,
        "database_uri": database,
        "admin_username": os.environ.get("MLFLOW_AUTH_ADMIN_USERNAME", "admin"),
        "authorization_function": "mlflow.server.auth:authenticate_request_basic_auth",
        "grant_default_workspace_access": "false",
    }
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = runtime / "basic_auth.ini"
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        config.write(out)
    return path


def ensure_worker_user() -> None:
    username = os.environ.get("FER_MLFLOW_WORKER_USERNAME", "")
    password_file = os.environ.get("FER_MLFLOW_WORKER_PASSWORD_FILE", "")
    if not username:
        return
    if not password_file:
        fail("FER_MLFLOW_WORKER_USERNAME is set but FER_MLFLOW_WORKER_PASSWORD_FILE is not")
    try:
        password = Path(password_file).read_text().splitlines()[0].strip("\r")
    except (OSError, IndexError):
        fail(f"FER_MLFLOW_WORKER_PASSWORD_FILE: cannot read a password from {password_file}")
    if not password or password.startswith("change-me") or len(password) < 12:
        fail(f"FER_MLFLOW_WORKER_PASSWORD_FILE: {password_file} is empty, shorter than 12 "
             "characters or still change-me; set a password of your own")
    # Imported here: mlflow.server.auth reads MLFLOW_AUTH_CONFIG_PATH when it is imported.
    from mlflow.server.auth import auth_config
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_config.database_uri)  # creates or migrates the user store
    try:
        if not store.has_user(username, use_primary=True):
            try:
                store.create_user(username, password, is_admin=False)
                print(f"fer-mlflow-server: created user {username!r}", file=sys.stderr)
            except Exception:  # another replica created it meanwhile
                if not store.has_user(username, use_primary=True):
                    raise
        elif not store.authenticate_user(username, password, use_primary=True):
            store.update_user(username, password=password)
            print(f"fer-mlflow-server: set the password of user {username!r}", file=sys.stderr)
    finally:
        store.engine.dispose()


def main(argv: list[str]) -> None:
    runtime = Path(os.environ.get("FER_SEARCH_RUNTIME_DIR", "/tmp/fer-search"))
    os.environ["MLFLOW_AUTH_CONFIG_PATH"] = str(write_auth_config(runtime))
    ensure_worker_user()
    os.execvp("mlflow", ["mlflow", "server", "--app-name", "basic-auth", *argv])


if __name__ == "__main__":
    main(sys.argv[1:])
