"""A tracking store that is down stops `run`, `worker` and `promote` at the start: one line on
stderr naming the store (password masked), exit code 1, after one probe (issue 19; before,
MLflow retried for ~106 s against PostgreSQL and ~251 s against HTTP).

"At once" is shown by counting the connections the command made to a server that hangs up on
each (`tests/search/listener.py`), not by timing it: a retry loop shows on any machine, a bound
in seconds only on a fast one."""

from __future__ import annotations

import os
import subprocess
import sys

import optuna
import pytest

from tests.search.listener import hang_up
from tests.search.studyhelp import write_spec

PASSWORD = "s3cr3t-pw"
# One probe (one connection here; libpq may try a second time without SSL after a hang-up).
# MLflow's own retries would be 7 or more.
MOST_ATTEMPTS = 2


def fer_search(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    for name in ("MLFLOW_TRACKING_URI", "FER_SEARCH_STORAGE", "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        env.pop(name, None)
    # The timeout only keeps a hung command from hanging the suite.
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _tracking_uri(kind: str, port: int) -> tuple[str, str]:
    """The unreachable URI and how it must be named on stderr (password masked)."""
    if kind == "postgresql":
        return (f"postgresql+psycopg2://fer:{PASSWORD}@127.0.0.1:{port}/mlflow",
                f"postgresql+psycopg2://fer:***@127.0.0.1:{port}/mlflow")
    return f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}"


def _command(command: str, tmp_path, storage: str, tracking: str) -> list[str]:
    if command == "promote":
        optuna.create_study(study_name="tiny", storage=storage)  # promote reads a real storage
        return ["promote", "tiny", "--storage", storage, "--tracking-uri", tracking]
    # Synthetic data is never made: the check fails before the data is touched.
    spec = write_spec(tmp_path)
    return [command, str(spec), "--storage", storage, "--tracking-uri", tracking]


@pytest.mark.parametrize("kind", ["postgresql", "http"])
@pytest.mark.parametrize("command", ["run", "worker", "promote"])
def test_unreachable_tracking_store_fails_fast_with_one_line(tmp_path, command, kind):
    storage = f"sqlite:///{tmp_path}/studies/optuna.db"
    (tmp_path / "studies").mkdir(exist_ok=True)
    with hang_up() as server:
        tracking, shown = _tracking_uri(kind, server.port)
        result = fer_search(*_command(command, tmp_path, storage, tracking), cwd=tmp_path)
        attempts = server.attempts

    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert shown in lines[0] and "tracking store" in lines[0]
    assert PASSWORD not in result.stderr + result.stdout
    assert "Traceback" not in result.stderr
    assert 1 <= attempts <= MOST_ATTEMPTS, f"{command} connected {attempts} times: {result.stderr}"
    assert not (tmp_path / ".cache").exists()  # the data was never touched
