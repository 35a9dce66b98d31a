"""Many workers through PgBouncer (issue 18): transaction pooling in front of PostgreSQL
(tests/infra/pgbouncer.py, the compose `pgbouncer` service), with a pool of 4 server connections.

- The exactly-once stress round (8 dry worker processes, staggered, one SIGKILLed, 32 points)
  runs with the pool's URL as every worker's storage URL; every point still runs exactly once,
  and PostgreSQL never sees more than the pool's connections while PgBouncer serves more
  clients than that.
- The study lock works through the pool: its waiters poll in short transactions instead of
  blocking in one, so waiters as many as the pool leave the holder a connection to work with.
"""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import create_engine, text

from search.storage.engines import engine_kwargs
from search.storage.locks import named_lock
from tests.infra.pgbouncer import server_connections
from tests.search.test_exactly_once import _one_stress_round

pytestmark = pytest.mark.postgres


class PeakConnections:
    """Polls PostgreSQL's connections to the `optuna` database and PgBouncer's clients of it
    in a thread, keeping the largest of each."""

    def __init__(self, cluster, bouncer) -> None:
        self.cluster, self.bouncer = cluster, bouncer
        self.servers = self.clients = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.servers = max(self.servers, server_connections(self.cluster))
            clients = sum(p["cl_active"] + p["cl_waiting"] for p in self.bouncer.pools()
                          if p["database"] == "optuna")
            self.clients = max(self.clients, clients)
            time.sleep(0.05)

    def __enter__(self) -> PeakConnections:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.slow
def test_workers_through_pgbouncer_run_every_point_once_on_the_pools_connections(
        pg_cluster, pg_bouncer, tmp_path):
    with PeakConnections(pg_cluster, pg_bouncer) as peak:
        _one_stress_round(pg_bouncer.url(), tmp_path / "round", "bounced")
    assert peak.servers <= pg_bouncer.pool, (peak.servers, peak.clients)
    assert peak.clients > pg_bouncer.pool, (peak.servers, peak.clients)  # the pool was shared


def test_the_study_lock_leaves_its_holder_a_connection_when_the_pool_is_full_of_waiters(
        pg_bouncer):
    url = pg_bouncer.url()
    entered: list[int] = []

    def wait_for_lock(index: int) -> None:
        with named_lock(url, "crowded"):
            entered.append(index)

    engine = create_engine(url, **engine_kwargs(url))
    try:
        with named_lock(url, "crowded"):
            waiters = [threading.Thread(target=wait_for_lock, args=(i,), daemon=True)
                       for i in range(pg_bouncer.pool)]
            for waiter in waiters:
                waiter.start()
            time.sleep(1.0)  # the waiters are polling (or, blocking, would hold the pool)
            answered: list[int] = []

            def holder_works() -> None:  # what the holder does under the lock: queries
                with engine.connect() as connection:
                    answered.append(connection.execute(text("SELECT 1")).scalar())

            worker = threading.Thread(target=holder_works, daemon=True)
            worker.start()
            worker.join(60)
            assert answered == [1], "the lock's holder got no connection from the pool"
            assert entered == []  # nobody else inside meanwhile
        for waiter in waiters:
            waiter.join(60)
        assert sorted(entered) == list(range(pg_bouncer.pool))  # each waiter in, in turn
    finally:
        engine.dispose()
