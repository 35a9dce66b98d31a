"""Session-wide fixtures of tests/search: one throwaway PostgreSQL cluster and one MLflow server
shared by every `postgres` test (each test uses its own study and experiment names), from
tests/infra/fixtures.py."""

from __future__ import annotations

from tests.infra.fixtures import (  # noqa: F401  (pytest fixtures)
    mlflow_server,
    mlflow_session_server,
    pg_bouncer,
    pg_cluster,
)
