"""`fer-search worker` processes for tests: their environment, starting them with output to a log
file, and waiting for what they do (`wait_for`, from tests/infra/waiting.py, watching them).

A worker whose environment names a test hook (`tests.infra.hooks.HOOK_VARIABLES`: kill itself at
an epoch, log its cache builds, unlocked cache files, a small disk) runs as
`python -m tests.infra.hooks worker ...`, which installs the hooks and then runs `fer-search`
itself; any other runs `python -m search.cli worker ...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.infra.hooks import HOOK_VARIABLES
from tests.infra.waiting import wait_for  # noqa: F401  (the workers' tests import it here)

REPO = Path(__file__).resolve().parents[2]


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
    """Starts `fer-search worker SPEC --threads 1 ARGS` in `folder` (its data and caches), with
    the test hooks `env` names installed."""
    log = folder / f"{name}.log"
    program = "search.cli"
    if HOOK_VARIABLES & set(env):  # tests/ is no installed package: found from the repository
        program = "tests.infra.hooks"
        env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                  env.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", program, "worker", str(spec_path), "--threads", "1", *args]
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Worker(process, log)
