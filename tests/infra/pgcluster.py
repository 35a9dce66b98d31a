"""A throwaway PostgreSQL cluster, for tests and benchmarks (`benchmarks/storage_load.py`,
`benchmarks/claim_scaling.py`).

The PostgreSQL of docker-compose.yml, run natively: `initdb` + `pg_ctl` in a temporary folder,
listening on 127.0.0.1 at a free port, with one password-protected role and two databases (one
for Optuna, one for MLflow: `tests/infra/mlflow_server.py` starts `mlflow server` on it).

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
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg2

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


def run_as() -> list[str]:
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
    binaries, prefix = bindir(), run_as()
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
