"""A throwaway PostgreSQL cluster and a real `mlflow server`, for tests and benchmarks.

The same topology as docker-compose.yml, run natively: `initdb` + `pg_ctl` in a temporary folder,
listening on 127.0.0.1 at a free port, with one password-protected role and two databases (one
for Optuna, one for MLflow), and an `mlflow server` process whose backend store is the second
database and whose artifacts live in the same temporary folder.

PostgreSQL refuses to run as root, so when the tests run as root the cluster runs as the
`postgres` system user (which Debian's package creates).

Where `initdb` is missing the `postgres` tests skip, unless FER_SEARCH_REQUIRE_POSTGRES=1 (CI
sets it), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from trainer import settings

REQUIRE_ENV = "FER_SEARCH_REQUIRE_POSTGRES"  # trainer.settings.require_postgres
USER = "fer"
DATABASES = ("optuna", "mlflow")


class ClusterUnavailable(RuntimeError):
    """PostgreSQL's server programs are not installed here."""


def bindir() -> Path:
    """The folder holding `initdb`, `pg_ctl` and `postgres` (not on PATH on Debian).

    Raises:
        ClusterUnavailable: PostgreSQL's server is not installed.
    """
    candidates: list[str] = []
    if shutil.which("initdb"):
        candidates.append(str(Path(shutil.which("initdb")).parent))
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        candidates.append(subprocess.run(["pg_config", "--bindir"], capture_output=True,
                                         text=True, check=True).stdout.strip())
    # Debian's layout, newest version first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"),
                         key=lambda p: int(Path(p).parent.name), reverse=True)
    for folder in candidates:
        if folder and (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    raise ClusterUnavailable("PostgreSQL's initdb/pg_ctl were not found (install the "
                             "`postgresql` package; .ci/run does)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run_as() -> list[str]:
    """The command prefix that runs PostgreSQL's programs as a non-root user."""
    if os.geteuid() != 0:
        return []
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise ClusterUnavailable("running as root and no `postgres` user exists") from None
    return ["runuser", "-u", "postgres", "--"]


@dataclass
class PgCluster:
    """A running throwaway cluster. Use `start_cluster()`."""

    root: Path
    port: int
    password: str
    bin: Path
    prefix: list[str] = field(default_factory=list)
    max_connections: int = 100  # PostgreSQL's default

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def url(self, database: str = "optuna") -> str:
        """SQLAlchemy URL of `database`, password included (never print it)."""
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def pg_ctl(self, *args: str, timeout: float = 60) -> None:
        # Output to a file, never a pipe: the server started by `start`/`restart` would inherit a
        # pipe and keep it open, and reading it would never end.
        with open(self.root / "pg_ctl.out", "ab") as sink:
            subprocess.run([*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), *args],
                           check=True, stdout=sink, stderr=sink, stdin=subprocess.DEVNULL,
                           timeout=timeout)

    def start(self) -> None:
        # -k: the Unix socket in our folder (the default /var/run/postgresql may not exist).
        options = (f"-p {self.port} -h 127.0.0.1 -k {self.root} -c fsync=off "
                   f"-c max_connections={self.max_connections}")
        self.pg_ctl("-o", options, "-l", str(self.log), "-w", "start")

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every client connection is cut."""
        self.pg_ctl("-m", "fast", "-l", str(self.log), "-w", "restart")

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self.pg_ctl("-m", "immediate", "-w", "stop", timeout=30)

    def execute(self, sql: str, database: str = "postgres") -> None:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER,
                                      password=self.password, dbname=database)
        connection.autocommit = True  # CREATE DATABASE cannot run in a transaction
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql)
        finally:
            connection.close()


def start_cluster(max_connections: int = 100) -> PgCluster:
    """initdb + start a cluster on 127.0.0.1 at a free port, with databases `optuna`, `mlflow`
    (`max_connections`: a benchmark of many workers connecting directly needs more than 100).

    Raises:
        ClusterUnavailable: PostgreSQL's server is not installed (or cannot run as non-root).
    """
    binaries, prefix = bindir(), _run_as()
    # Not under pytest's tmp_path: that is private to root, and the server runs as `postgres`.
    root = Path(tempfile.mkdtemp(prefix="fer-pg-"))
    password = "pw-" + secrets.token_hex(12)  # distinctive: the secrets test greps for it
    (root / "pwfile").write_text(password + "\n")
    if prefix:
        os.chmod(root, 0o700)
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(root / "pwfile", "postgres", "postgres")
    cluster = PgCluster(root, free_port(), password, binaries, prefix, max_connections)
    try:
        subprocess.run(
            [*prefix, str(binaries / "initdb"), "-D", str(cluster.data), "-U", USER,
             f"--pwfile={root / 'pwfile'}", "--auth=scram-sha-256", "--encoding=UTF8",
             "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        (root / "pwfile").unlink()
        cluster.start()
        for name in DATABASES:
            cluster.execute(f"CREATE DATABASE {name}")
    except BaseException:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    cluster.stop()
    shutil.rmtree(cluster.root, ignore_errors=True)


@dataclass
class MlflowServer:
    """A running `mlflow server` backed by the cluster's `mlflow` database."""

    process: subprocess.Popen
    port: int
    log: Path

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


def start_mlflow(cluster: PgCluster, folder: Path, timeout: float = 180) -> MlflowServer:
    """Starts `mlflow server` (one web worker: 2 cores here) and waits for /health."""
    port = free_port()
    log = folder / "mlflow-server.log"
    artifacts = folder / "mlartifacts"
    artifacts.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", artifacts.as_uri(),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]
    # The backend URL holds the password: by environment, not on a command line `ps` shows.
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true",
           "MLFLOW_BACKEND_STORE_URI": cluster.url("mlflow")}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    server = MlflowServer(process, port, log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {process.returncode}; see {log}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(f"{server.uri}/health", timeout=2) as response:
                if response.status == 200:
                    return server
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"mlflow server did not answer /health in {timeout:.0f} s; see {log}")


@contextlib.contextmanager
def topology(folder: Path) -> Iterator[tuple[PgCluster, MlflowServer]]:
    """A cluster and an MLflow server on it, removed afterwards."""
    cluster = start_cluster()
    try:
        server = start_mlflow(cluster, folder)
        try:
            yield cluster, server
        finally:
            server.stop()
    finally:
        remove_cluster(cluster)


# ------------------------------------------------------------------------------- pytest fixtures


try:
    import pytest
except ImportError:  # the benchmarks use this module without the test tools
    pytest = None


def _unavailable(reason: str) -> None:
    if settings.require_postgres():
        pytest.fail(f"{REQUIRE_ENV}=1 but no PostgreSQL cluster can be started: {reason}")
    pytest.skip(f"no PostgreSQL cluster: {reason}")


if pytest is not None:

    @pytest.fixture(scope="session")
    def pg_cluster() -> Iterator[PgCluster]:
        """A throwaway cluster for the whole session (tests use their own study names)."""
        try:
            cluster = start_cluster()
        except ClusterUnavailable as error:
            _unavailable(str(error))
        try:
            yield cluster
        finally:
            remove_cluster(cluster)

    @pytest.fixture(scope="session")
    def mlflow_server(pg_cluster: PgCluster, tmp_path_factory) -> Iterator[MlflowServer]:
        """`mlflow server` on the cluster's `mlflow` database, for the whole session."""
        server = start_mlflow(pg_cluster, tmp_path_factory.mktemp("mlflow-server"))
        try:
            yield server
        finally:
            server.stop()


# ------------------------------------------------------------------------------------- workers


def worker_env(storage_url: str, tracking_uri: str, **extra: str) -> dict[str, str]:
    """A worker's environment: the URLs, quick heartbeats (a dead worker is noticed in seconds),
    unbuffered output."""
    return {
        **os.environ,
        "FER_SEARCH_STORAGE": storage_url,
        "MLFLOW_TRACKING_URI": tracking_uri,
        "FER_SEARCH_HEARTBEAT_S": "1",
        "FER_SEARCH_GRACE_S": "4",
        "PYTHONUNBUFFERED": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        **extra,
    }


@dataclass
class Worker:
    """A `fer-search worker` process whose output goes to a log file."""

    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"worker still running after {timeout:.0f} s; its output:\n"
                                 f"{self.output()[-3000:]}") from None

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def spawn_worker(folder: Path, spec_path: Path, env: dict[str, str], name: str,
                 *args: str) -> Worker:
    """Starts `fer-search worker SPEC --threads 1 ARGS` in `folder` (its data and caches)."""
    log = folder / f"{name}.log"
    command = [sys.executable, "-m", "search.cli", "worker", str(spec_path), "--threads", "1",
               *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Worker(process, log)


def wait_for(condition, timeout: float, what: str, interval: float = 0.2,
             watch: tuple[Worker, ...] = ()):
    """Polls `condition()` until it returns something truthy; returns it.

    A poll that raises is retried (the store may not exist yet); on timeout the failure names
    the last error and the last value seen, not just "not ready". A watched worker that exits
    meanwhile fails the wait at once, with its output.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value = None
    while True:
        try:
            value = condition()
        except Exception as error:  # noqa: BLE001  (kept for the failure message)
            last_error, value = error, None
        else:
            last_error, last_value = None, value
        if value:
            return value
        for worker in watch:
            if worker.process.poll() is not None:
                raise AssertionError(
                    f"waiting for {what}: {worker.log.stem} exited with "
                    f"{worker.process.returncode}; last seen: {_seen(last_error, last_value)}; "
                    f"its output:\n{worker.output()[-3000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last "
                                 f"seen: {_seen(last_error, last_value)}")
        time.sleep(interval)


def _seen(error: BaseException | None, value) -> str:
    if error is not None:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
    return repr(value)[:500]
