"""deploy/postgres/10-roles.sql on a real PostgreSQL (a throwaway cluster), as the postgres image
runs it on its first start: each component's role can do its job and no more. The workers' role
runs a study through fer-search's own storage code, logging in with the libpq password file the
image's entrypoint writes; the dashboard's role reads the study and cannot delete it (issue 30:
optuna-dashboard deleted studies for anyone); MLflow's role reaches MLflow's databases only.
And, where Flask-WTF is installed, the MLflow server started as compose and Kubernetes start it
refuses a write without a login."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from base64 import b64encode
from pathlib import Path

import pytest

from tests.deploy.conftest import missing_tool
from tests.infra.fixtures import unavailable
from tests.infra.pgcluster import ClusterUnavailable, free_port, remove_cluster, start_cluster

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
ROLES = REPO / "deploy" / "postgres" / "10-roles.sql"
SECRETS = REPO / "deploy" / "docker" / "fer-search-secrets.sh"
MLFLOW_SERVER = REPO / "deploy" / "mlflow" / "fer-mlflow-server.py"
PASSWORDS = {"worker-db-password": "worker-Pw-3b9d1c2e", "mlflow-db-password": "mlflow-Pw-5e7a90b1",
             "dashboard-db-password": "dashboard-Pw-8c1f2d3a"}


def psql(cluster, folder: Path, *args: str, database: str = "optuna"):
    """psql as the superuser, as the image's entrypoint runs init scripts."""
    env = {**os.environ, "PGPASSWORD": cluster.password, "FER_SECRETS_DIR": str(folder),
           "POSTGRES_DB": "optuna"}
    tool = cluster.bin / "psql"
    if not tool.is_file():
        tool = shutil.which("psql") or tool
    return subprocess.run([str(tool), "-X", "-v", "ON_ERROR_STOP=1",
                           "-h", "127.0.0.1", "-p", str(cluster.port), "-U", "fer",
                           "-d", database, *args],
                          env=env, capture_output=True, text=True, timeout=120)


def write_secrets(folder: Path, values: dict[str, str]) -> Path:
    folder.mkdir(exist_ok=True)
    for name, value in values.items():
        (folder / name).write_text(value + "\n")
    return folder


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        cluster = start_cluster()
    except ClusterUnavailable as error:
        unavailable(str(error))
    try:
        folder = write_secrets(tmp_path_factory.mktemp("secrets"), PASSWORDS)
        done = psql(cluster, folder, "-f", str(ROLES))
        assert done.returncode == 0, done.stderr
        yield cluster
    finally:
        remove_cluster(cluster)


def url(cluster, role: str, database: str = "optuna", password: bool = True) -> str:
    secret = PASSWORDS[role.removeprefix("fer_") + "-db-password"] if password else None
    auth = f"{role}:{secret}" if secret else role
    return f"postgresql+psycopg2://{auth}@127.0.0.1:{cluster.port}/{database}"


def connect(cluster, role: str, database: str):
    import psycopg2

    return psycopg2.connect(host="127.0.0.1", port=cluster.port, user=role, dbname=database,
                            password=PASSWORDS[role.removeprefix("fer_") + "-db-password"])


def test_the_script_runs_again_and_refuses_the_examples_passwords(cluster, tmp_path):
    again = psql(cluster, write_secrets(tmp_path / "same", PASSWORDS), "-f", str(ROLES))
    assert again.returncode == 0, again.stderr
    weak = write_secrets(tmp_path / "weak", {**PASSWORDS, "dashboard-db-password": "change-me"})
    done = psql(cluster, weak, "-f", str(ROLES))
    assert done.returncode != 0
    assert "fer-search: a database password" in done.stderr
    assert "change-me" not in done.stdout
    # ... and changed nothing: the old password still works.
    connect(cluster, "fer_dashboard", "optuna").close()


def test_no_role_is_a_superuser_or_may_create_roles_or_databases(cluster):
    connection = connect(cluster, "fer_worker", "optuna")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication"
                           " FROM pg_roles WHERE rolname LIKE 'fer\\_%'")
            rows = {row[0]: row[1:] for row in cursor}
    finally:
        connection.close()
    assert set(rows) == {"fer_worker", "fer_mlflow", "fer_dashboard"}
    assert all(flags == (False, False, False, False) for flags in rows.values()), rows


def test_workers_run_a_study_and_the_dashboard_only_reads_it(cluster, tmp_path):
    import optuna
    import psycopg2

    # The worker's way in: a URL without a password, and the file the image's entrypoint writes.
    password_file = tmp_path / "worker-db-password"
    password_file.write_text(PASSWORDS["worker-db-password"] + "\n")
    script = ("from search.storage.sessions import storage_session\n"
              "import optuna, sys\n"
              "with storage_session(sys.argv[1]) as storage:\n"
              "    study = optuna.create_study(study_name='roles', storage=storage)\n"
              "    study.optimize(lambda trial: trial.suggest_float('x', 0, 1), n_trials=2)\n")
    env = {**os.environ, "FER_SEARCH_DB_PASSWORD_FILE": str(password_file),
           "FER_SEARCH_RUNTIME_DIR": str(tmp_path / "runtime"), "PYTHONPATH": str(REPO)}
    env.pop("PGPASSWORD", None)
    env.pop("FER_SEARCH_STORAGE", None)
    done = subprocess.run(["sh", str(SECRETS), sys.executable, "-c", script,
                           url(cluster, "fer_worker", password=False)],
                          env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]

    from search.storage.sessions import storage_session

    with storage_session(url(cluster, "fer_dashboard"), read_only=True) as storage:
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["roles"]
        assert len(optuna.load_study(study_name="roles", storage=storage).trials) == 2
        with pytest.raises(Exception) as refused:  # Optuna's StorageInternalError
            optuna.delete_study(study_name="roles", storage=storage)
        assert "permission denied" in f"{refused.value} {refused.value.__cause__}"
    connection = connect(cluster, "fer_dashboard", "optuna")
    try:
        for statement in ("DELETE FROM studies", "UPDATE trials SET state = 'FAIL'",
                          "INSERT INTO study_user_attributes (study_id, key, value_json) "
                          "VALUES (1, 'note', '1')", "CREATE TABLE mine (x int)",
                          "DROP TABLE trials"):
            with connection.cursor() as cursor, pytest.raises(psycopg2.Error):
                cursor.execute(statement)
            connection.rollback()
    finally:
        connection.close()
    with storage_session(url(cluster, "fer_dashboard"), read_only=True) as storage:
        assert len(optuna.load_study(study_name="roles", storage=storage).trials) == 2


@pytest.mark.parametrize(("role", "database"), [("fer_mlflow", "optuna"),
                                                ("fer_dashboard", "mlflow"),
                                                ("fer_dashboard", "mlflow_auth"),
                                                ("fer_worker", "mlflow"),
                                                ("fer_worker", "postgres")])
def test_a_role_reaches_its_own_databases_only(cluster, role, database):
    import psycopg2

    with pytest.raises(psycopg2.OperationalError, match="permission denied"):
        connect(cluster, role, database)
    connect(cluster, "fer_mlflow", "mlflow").close()
    connect(cluster, "fer_mlflow", "mlflow_auth").close()


def _request(uri: str, path: str, body: dict | None, user: tuple[str, str] | None):
    request = urllib.request.Request(
        uri + path, data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}, method="POST" if body else "GET")
    if user:
        request.add_header("Authorization",
                           "Basic " + b64encode(f"{user[0]}:{user[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, ConnectionError):
        return 0  # not listening yet


@pytest.mark.slow
def test_mlflow_started_as_the_deployments_start_it_refuses_writes_without_a_login(
        cluster, tmp_path):
    if importlib.util.find_spec("flask_wtf") is None:
        missing_tool("Flask-WTF (MLflow's `auth` extra, which its basic-auth app needs)")
    secrets = {"mlflow-db-password": PASSWORDS["mlflow-db-password"],
               "mlflow-admin-password": "admin-Pw-0a1b2c3d4e", "mlflow-secret-key":
               "csrf-key-9f8e7d6c5b", "mlflow-worker-password": "fer-worker-Pw-77aa88bb"}
    folder = write_secrets(tmp_path / "secrets", secrets)
    port = free_port()
    base = f"postgresql+psycopg2://fer_mlflow@127.0.0.1:{cluster.port}"
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "FER_SEARCH_RUNTIME_DIR": str(tmp_path / "runtime"),
           "MLFLOW_BACKEND_STORE_URI": f"{base}/mlflow",
           "MLFLOW_AUTH_DATABASE_URI": f"{base}/mlflow_auth",
           "FER_SEARCH_DB_PASSWORD_FILE": str(folder / "mlflow-db-password"),
           "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
           "MLFLOW_AUTH_ADMIN_PASSWORD_FILE": str(folder / "mlflow-admin-password"),
           "MLFLOW_FLASK_SERVER_SECRET_KEY_FILE": str(folder / "mlflow-secret-key"),
           "FER_MLFLOW_WORKER_USERNAME": "fer-worker",
           "FER_MLFLOW_WORKER_PASSWORD_FILE": str(folder / "mlflow-worker-password"),
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("PGPASSWORD", None)
    log = (tmp_path / "mlflow.log").open("w")
    server = subprocess.Popen(
        ["sh", str(SECRETS), sys.executable, str(MLFLOW_SERVER), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1", "--artifacts-destination",
         str(tmp_path / "artifacts")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while _request(uri, "/health", None, None) != 200:
            assert server.poll() is None, (tmp_path / "mlflow.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "the MLflow server did not start"
            time.sleep(1)
        create = "/api/2.0/mlflow/experiments/create"
        assert _request(uri, create, {"name": "anonymous"}, None) == 401
        assert _request(uri, create, {"name": "wrong"}, ("fer-worker", "not-its-password")) == 401
        worker = ("fer-worker", secrets["mlflow-worker-password"])
        assert _request(uri, create, {"name": "from-a-worker"}, worker) == 200
        # The workers' user is no admin: it cannot make users.
        users = "/api/2.0/mlflow/users/create"
        assert _request(uri, users, {"username": "eve", "password": "eve-password-123"},
                        worker) == 403
        admin = ("admin", secrets["mlflow-admin-password"])
        assert _request(uri, users, {"username": "student1", "password": "student1-password"},
                        admin) == 200
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
        log.close()
    text = (tmp_path / "mlflow.log").read_text()
    for value in secrets.values():
        assert value not in text
