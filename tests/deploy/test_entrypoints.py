"""The scripts the containers start with, run here with sh (no Docker engine): the fer-search
image's entrypoint turns secret files into a private libpq password file and MLflow's variables,
and refuses the examples' passwords with one line; PgBouncer's entrypoint reads its passwords
from files, lets one role in and gives its admin console a user of its own."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECRETS = REPO / "deploy" / "docker" / "fer-search-secrets.sh"
PGBOUNCER = REPO / "deploy" / "pgbouncer" / "entrypoint.sh"
PRINT_ENV = [sys.executable, "-c",
             "import json, os; print(json.dumps({k: v for k, v in os.environ.items()}))"]


def run(script: Path, env: dict[str, str], *command: str) -> subprocess.CompletedProcess:
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(["sh", str(script), *command], env={**base, **env},
                          capture_output=True, text=True, timeout=60)


def secret(folder: Path, name: str, value: str) -> str:
    path = folder / name
    path.write_text(value + "\n")
    path.chmod(0o444)  # as compose writes them; libpq would refuse such a file itself
    return str(path)


def test_the_database_password_becomes_a_private_libpq_password_file(tmp_path):
    import json

    password = "pw:with\\colon-and-backslash"
    env = {"FER_SEARCH_DB_PASSWORD_FILE": secret(tmp_path, "db", password),
           "FER_SEARCH_RUNTIME_DIR": str(tmp_path / "runtime"),
           "MLFLOW_TRACKING_PASSWORD_FILE": secret(tmp_path, "mlflow", "tracking-password-1"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": secret(tmp_path, "key", "a-secret-key-of-length")}
    done = run(SECRETS, env, *PRINT_ENV)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    pgpass = Path(seen["PGPASSFILE"])
    assert pgpass.parent == tmp_path / "runtime"
    assert stat.S_IMODE(pgpass.stat().st_mode) == 0o600  # libpq ignores anything looser
    assert stat.S_IMODE(pgpass.parent.stat().st_mode) == 0o700
    # libpq's format, with ':' and '\' escaped.
    assert pgpass.read_text() == "*:*:*:*:pw\\:with\\\\colon-and-backslash\n"
    assert password not in json.dumps(seen)  # the database password is in no variable
    assert seen["MLFLOW_TRACKING_PASSWORD"] == "tracking-password-1"
    assert seen["MLFLOW_FLASK_SERVER_SECRET_KEY"] == "a-secret-key-of-length"
    assert "MLFLOW_TRACKING_PASSWORD_FILE" not in seen


@pytest.mark.parametrize(("value", "why"), [("change-me", "change-me"), ("", "empty"),
                                             ("short", "fewer than 12")])
def test_an_examples_password_stops_the_container_with_one_line(tmp_path, value, why):
    env = {"MLFLOW_TRACKING_PASSWORD_FILE": secret(tmp_path, "mlflow", value),
           "FER_SEARCH_RUNTIME_DIR": str(tmp_path / "runtime")}
    done = run(SECRETS, env, *PRINT_ENV)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "MLFLOW_TRACKING_PASSWORD_FILE" in lines[0] and why in lines[0]
    assert not done.stdout  # the command never ran


def test_a_missing_secret_file_stops_the_container(tmp_path):
    done = run(SECRETS, {"FER_SEARCH_DB_PASSWORD_FILE": str(tmp_path / "nothing"),
                         "FER_SEARCH_RUNTIME_DIR": str(tmp_path / "runtime")}, "true")
    assert done.returncode == 2 and "cannot read" in done.stderr
    assert not (tmp_path / "runtime" / "pgpass").exists()


def fake_pgbouncer(tmp_path: Path) -> dict[str, str]:
    """A `pgbouncer` on PATH that prints the settings it was given and its auth file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "pgbouncer"
    fake.write_text('#!/bin/sh\ncat "$1"; echo ---; '
                    'cat "$(sed -n "s/^auth_file = //p" "$1")"\n')
    fake.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PGBOUNCER_DIR": str(tmp_path / "run")}


def test_pgbouncer_reads_passwords_from_files_and_its_console_has_its_own_user(tmp_path):
    env = {**fake_pgbouncer(tmp_path),
           "POSTGRES_USER": "fer_worker",
           "POSTGRES_PASSWORD_FILE": secret(tmp_path, "worker", 'a "quoted" password'),
           "PGBOUNCER_ADMIN_USER": "fer_pgbouncer_admin",
           "PGBOUNCER_ADMIN_PASSWORD_FILE": secret(tmp_path, "admin", "admin-password-1")}
    done = run(PGBOUNCER, env)
    assert done.returncode == 0, done.stderr
    settings, users = done.stdout.split("---\n")
    assert "admin_users = fer_pgbouncer_admin\n" in settings
    assert users == ('"fer_worker" "a ""quoted"" password"\n'
                     '"fer_pgbouncer_admin" "admin-password-1"\n')
    assert "tls" not in settings
    userlist = tmp_path / "run" / "userlist.txt"
    assert stat.S_IMODE(userlist.stat().st_mode) == 0o600


def test_pgbouncer_as_before_for_slurm_and_with_tls(tmp_path):
    env = {**fake_pgbouncer(tmp_path), "POSTGRES_USER": "alice",
           "POSTGRES_PASSWORD": "alices-password",
           "PGBOUNCER_SERVER_TLS_SSLMODE": "verify-full",
           "PGBOUNCER_SERVER_TLS_CA_FILE": "/tls/ca.crt",
           "PGBOUNCER_CLIENT_TLS_SSLMODE": "require",
           "PGBOUNCER_CLIENT_TLS_CERT_FILE": "/tls/tls.crt",
           "PGBOUNCER_CLIENT_TLS_KEY_FILE": "/tls/tls.key"}
    done = run(PGBOUNCER, env)
    assert done.returncode == 0, done.stderr
    settings, users = done.stdout.split("---\n")
    assert "admin_users = alice\n" in settings  # no console user given: the pool's, as before
    assert users == '"alice" "alices-password"\n'
    for line in ("server_tls_sslmode = verify-full", "server_tls_ca_file = /tls/ca.crt",
                 "client_tls_sslmode = require", "client_tls_key_file = /tls/tls.key"):
        assert line + "\n" in settings


@pytest.mark.parametrize("admin", ["fer_worker", ""])
def test_pgbouncer_refuses_a_shared_console_user_or_the_examples_password(tmp_path, admin):
    env = {**fake_pgbouncer(tmp_path), "POSTGRES_USER": "fer_worker",
           "POSTGRES_PASSWORD_FILE": secret(tmp_path, "worker",
                                            "change-me" if not admin else "a-good-password"),
           "PGBOUNCER_ADMIN_USER": admin or "fer_pgbouncer_admin",
           "PGBOUNCER_ADMIN_PASSWORD_FILE": secret(tmp_path, "admin", "admin-password-1")}
    done = run(PGBOUNCER, env)
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "---" not in done.stdout  # pgbouncer never started
