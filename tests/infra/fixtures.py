"""The pytest fixtures of the throwaway stores: a PostgreSQL cluster, PgBouncer in front of it
and an `mlflow server` with its login on it, each started once per session (tests use their own
study and experiment names). A conftest imports the ones its tests use.

Where PostgreSQL (or PgBouncer) is not installed the tests that need it skip, unless
FER_SEARCH_REQUIRE_POSTGRES=1 (CI sets it), which turns the skip into a failure.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.infra import settings
from tests.infra.mlflow_server import MlflowServer, start_mlflow
from tests.infra.pgbouncer import Bouncer, remove_bouncer, start_bouncer
from tests.infra.pgcluster import ClusterUnavailable, PgCluster, remove_cluster, start_cluster


def unavailable(reason: str) -> None:
    """Skips the test (a failure where FER_SEARCH_REQUIRE_POSTGRES=1): no cluster here."""
    if settings.require_postgres():
        pytest.fail("FER_SEARCH_REQUIRE_POSTGRES=1 but no PostgreSQL cluster can be started: "
                    f"{reason}")
    pytest.skip(f"no PostgreSQL cluster: {reason}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway cluster for the whole session (tests use their own study names)."""
    try:
        cluster = start_cluster()
    except ClusterUnavailable as error:
        unavailable(str(error))
    try:
        yield cluster
    finally:
        remove_cluster(cluster)


@pytest.fixture(scope="session")
def pg_bouncer(pg_cluster: PgCluster) -> Iterator[Bouncer]:
    """PgBouncer with a pool of 4 server connections in front of the session's cluster."""
    try:
        bouncer = start_bouncer(pg_cluster, pool=4)
    except ClusterUnavailable as error:
        unavailable(str(error))
    try:
        yield bouncer
    finally:
        remove_bouncer(bouncer)


@pytest.fixture(scope="session")
def mlflow_session_server(pg_cluster: PgCluster, tmp_path_factory) -> Iterator[MlflowServer]:
    """`mlflow server` with its login on the cluster's `mlflow` database, for the whole
    session. Tests take `mlflow_server`, which logs them in."""
    server = start_mlflow(pg_cluster, tmp_path_factory.mktemp("mlflow-server"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mlflow_server(mlflow_session_server: MlflowServer, monkeypatch) -> MlflowServer:
    """The session's `mlflow server`, with this test logged in as the workers' user: MLflow's
    client in the test and every worker it starts (`workers.worker_env` copies the environment)
    send its credentials, for this test only."""
    for name, value in mlflow_session_server.credentials().items():
        monkeypatch.setenv(name, value)
    return mlflow_session_server
