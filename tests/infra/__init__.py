"""What tests stand up and hook: throwaway PostgreSQL, PgBouncer and MLflow servers, worker
processes, the pytest fixtures, the test hooks and the tests' knobs (ARCHITECTURE.md, tests/)."""
