"""Session-wide fixtures of tests/search: one throwaway PostgreSQL cluster and one MLflow server
shared by every `postgres` test (each test uses its own study and experiment names)."""

from __future__ import annotations

from benchmarks.pgbouncer import pg_bouncer  # noqa: F401  (pytest fixture)
from benchmarks.pgcluster import mlflow_server, pg_cluster  # noqa: F401  (pytest fixtures)
