"""A real `mlflow server` with its login, on a throwaway PostgreSQL cluster, for tests.

Started as compose and Kubernetes start it: by the deployments' launcher
(deploy/mlflow/fer-mlflow-server.py), so `mlflow server --app-name basic-auth`, with MLflow's
auth settings written into the server's folder, its user store a SQLite file there, the admin's
password and the Flask secret key by environment, and a workers' user (not an admin) made from a
password file. The backend store is the cluster's `mlflow` database, the artifacts a folder
beside it. Clients log in as the workers' user: `credentials()` is the environment MLflow's
client reads (MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD). No password is ever on a
command line.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.infra.pgcluster import PgCluster, free_port
from tests.infra.waiting import http_ok, wait_for

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "deploy" / "mlflow" / "fer-mlflow-server.py"
WORKER_USER = "fer-worker"
ADMIN_USER = "admin"


@dataclass
class MlflowServer:
    """A running `mlflow server` backed by the cluster's `mlflow` database. Use
    `start_mlflow()`."""

    process: subprocess.Popen
    port: int
    log: Path
    password: str  # the workers' user's (never print it)
    admin_password: str

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def credentials(self) -> dict[str, str]:
        """The environment that logs MLflow's client (and a worker) in as the workers' user."""
        return {"MLFLOW_TRACKING_USERNAME": WORKER_USER,
                "MLFLOW_TRACKING_PASSWORD": self.password}

    def stop(self) -> None:
        if self.process.poll() is None:
            # uvicorn's workers are its children: end the whole group we started.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 15)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)
                self.process.wait()


def _private_file(path: Path, text: str) -> Path:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as out:
        out.write(text + "\n")
    return path


def start_mlflow(cluster: PgCluster, folder: Path, timeout: float = 180) -> MlflowServer:
    """Starts `mlflow server --app-name basic-auth` (one web worker: 2 cores here) through the
    deployments' launcher and waits for /health (which needs no login)."""
    port = free_port()
    log = folder / "mlflow-server.log"
    artifacts = folder / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    password = "fer-worker-" + secrets.token_hex(12)
    admin_password = "admin-" + secrets.token_hex(12)
    command = [
        sys.executable, str(LAUNCHER),
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # Passwords and the backend URL (which holds the database password) by environment and
    # file, not on a command line `ps` shows.
    env = {**os.environ,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "MLFLOW_DISABLE_TELEMETRY": "true",
           # No job runner: MLflow 3's server otherwise starts 8 more Python processes (a runner
           # and 7 huey consumers, each importing MLflow: ~3 s less to /health, and pages that
           # loaded while they started were slowed on 2 cores) for jobs no test submits.
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
           "MLFLOW_BACKEND_STORE_URI": cluster.url("mlflow"),
           "FER_SEARCH_RUNTIME_DIR": str(folder / "runtime"),
           "MLFLOW_AUTH_DATABASE_URI": f"sqlite:///{folder / 'mlflow-auth.db'}",
           "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN_USER,
           "MLFLOW_AUTH_ADMIN_PASSWORD": admin_password,
           "MLFLOW_FLASK_SERVER_SECRET_KEY": secrets.token_hex(16),
           "FER_MLFLOW_WORKER_USERNAME": WORKER_USER,
           "FER_MLFLOW_WORKER_PASSWORD_FILE": str(
               _private_file(folder / "mlflow-worker-password", password))}
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        env.pop(name, None)
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = MlflowServer(process, port, log, password, admin_password)
    try:
        wait_for(lambda: http_ok(f"{server.uri}/health"), timeout, "mlflow server's /health",
                 interval=0.5, watch=[server])
    except BaseException:
        server.stop()
        raise
    return server
