"""A throwaway PgBouncer in transaction pooling in front of a throwaway PostgreSQL cluster
(tests/infra/pgcluster.py), for tests and benchmarks: the `pgbouncer` service of
docker-compose.yml, run natively.

Many workers then hold many client connections to PgBouncer, while PostgreSQL sees at most
`pool` server connections per database. Workers take its URL as their storage URL; nothing else
changes for them (search.storage.locks holds its advisory locks in transactions, which is what
transaction pooling allows; psycopg2 prepares no statements).

PgBouncer refuses to run as root: as for the cluster, it then runs as the `postgres` user.
Where `pgbouncer` is missing the tests that need it skip, unless FER_SEARCH_REQUIRE_POSTGRES=1
(CI sets it, and .ci/run installs Debian's `pgbouncer`), which turns the skip into a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from tests.infra.pgcluster import USER, ClusterUnavailable, PgCluster, free_port, run_as
from tests.infra.waiting import port_open, wait_for

DEFAULT_POOL = 40  # server connections per database (the goal: at most 50 in all)
MAX_CLIENTS = 4000  # client connections PgBouncer accepts (about 3 per worker)
# How long a client may wait for a server connection before PgBouncer cuts it off (its default,
# 120 s, cut off 49 of 128 and 183 of 256 starting workers on a saturated 2-core machine:
# benchmarks/results/storage_load.md). A worker waiting for the pool is waiting for the
# database, as for a lock; its own deadlines decide when to give up.
QUERY_WAIT_S = 900


@dataclass
class Bouncer:
    """A running PgBouncer. Use `start_bouncer()`."""

    root: Path
    port: int
    password: str
    pool: int

    @property
    def log(self) -> Path:
        return self.root / "pgbouncer.log"

    def url(self, database: str = "optuna") -> str:
        """SQLAlchemy URL of `database` through the pool, password included (never print it)."""
        return f"postgresql+psycopg2://{USER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def pools(self) -> list[dict]:
        """`SHOW POOLS` of PgBouncer's admin console: clients and servers per pool."""
        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=USER,
                                      password=self.password, dbname="pgbouncer")
        connection.autocommit = True  # the admin console takes no transactions
        try:
            with connection.cursor() as cursor:
                cursor.execute("SHOW POOLS")
                names = [column.name for column in cursor.description]
                return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
        finally:
            connection.close()

    def stop(self) -> None:
        pid_file = self.root / "pgbouncer.pid"
        with contextlib.suppress(OSError, ValueError, ProcessLookupError):
            pid = int(pid_file.read_text().strip())
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                os.kill(pid, 0)  # raises ProcessLookupError once it is gone
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)


def binary() -> str:
    """The `pgbouncer` program (Debian installs it in /usr/sbin).

    Raises:
        ClusterUnavailable: PgBouncer is not installed.
    """
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if Path(p).is_file()), None)
    if found is None:
        raise ClusterUnavailable("pgbouncer was not found (install the `pgbouncer` package; "
                                 ".ci/run does)")
    return found


def start_bouncer(cluster: PgCluster, pool: int = DEFAULT_POOL,
                  max_clients: int = MAX_CLIENTS) -> Bouncer:
    """Starts PgBouncer (transaction pooling, at most `pool` server connections per database)
    on 127.0.0.1 at a free port, in front of `cluster`, and waits until it accepts connections.

    Raises:
        ClusterUnavailable: PgBouncer is not installed (or cannot run as non-root).
    """
    program, prefix = binary(), run_as()
    root = Path(tempfile.mkdtemp(prefix="fer-pgbouncer-"))
    bouncer = Bouncer(root, free_port(), cluster.password, pool)
    # The password in PgBouncer's auth file, readable by it alone: it answers SCRAM itself.
    (root / "userlist.txt").write_text(f'"{USER}" "{cluster.password}"\n')
    (root / "pgbouncer.ini").write_text(f"""\
[databases]
* = host=127.0.0.1 port={cluster.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bouncer.port}
unix_socket_dir = {root}
auth_type = scram-sha-256
auth_file = {root / "userlist.txt"}
admin_users = {USER}
pool_mode = transaction
default_pool_size = {pool}
max_db_connections = {pool}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = {max_clients}
query_wait_timeout = {QUERY_WAIT_S}
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {bouncer.log}
pidfile = {root / "pgbouncer.pid"}
""")
    os.chmod(root / "userlist.txt", 0o600)
    if prefix:
        os.chmod(root, 0o700)
        for path in (root, *root.iterdir()):
            shutil.chown(path, "postgres", "postgres")
    try:
        subprocess.run([*prefix, program, "-d", str(root / "pgbouncer.ini")], check=True,
                       capture_output=True, timeout=30, stdin=subprocess.DEVNULL)
        # `-d`: PgBouncer daemonizes, so there is no child to watch, only its log.
        wait_for(lambda: port_open(bouncer.port), 20,
                 f"pgbouncer to listen on port {bouncer.port}", interval=0.1, log=bouncer.log)
    except BaseException:
        bouncer.stop()
        shutil.rmtree(root, ignore_errors=True)
        raise
    return bouncer


def remove_bouncer(bouncer: Bouncer) -> None:
    bouncer.stop()
    shutil.rmtree(bouncer.root, ignore_errors=True)


def server_connections(cluster: PgCluster, database: str = "optuna") -> int:
    """Client backends PostgreSQL has for `database` now (pg_stat_activity), this poll's own
    connection (to `postgres`) left out."""
    connection = psycopg2.connect(host="127.0.0.1", port=cluster.port, user=USER,
                                  password=cluster.password, dbname="postgres")
    connection.autocommit = True
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND backend_type = 'client backend'", (database,))
            return int(cursor.fetchone()[0])
    finally:
        connection.close()
