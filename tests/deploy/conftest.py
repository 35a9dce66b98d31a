"""Fixtures of tests/deploy: the throwaway PostgreSQL cluster of tests/infra/pgcluster.py (Slurm
test), and the offline tools (kubectl, kubernetes-validate), which fail rather than skip in CI."""

from __future__ import annotations

import os

import pytest

from tests.infra.fixtures import pg_cluster  # noqa: F401  (pytest fixture)


def missing_tool(what: str) -> None:
    """A tool of the `dev` extra is missing: a skip on a laptop, a failure in CI (CI=true)."""
    message = f"{what} is not installed (pip install -c constraints.txt '.[dev]')"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI: {message}")
    pytest.skip(message)
