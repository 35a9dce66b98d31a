"""`fer-search worker` processes for tests: their environment, starting them with output to a log
file, and waiting for what they do.

A worker whose environment names a test hook (`tests.infra.hooks.HOOK_VARIABLES`: kill itself at
an epoch, log its cache builds, unlocked cache files, a small disk) runs as
`python -m tests.infra.hooks worker ...`, which installs the hooks and then runs `fer-search`
itself; any other runs `python -m search.cli worker ...`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.infra.hooks import HOOK_VARIABLES

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


def wait_for(condition, timeout: float, what: str, interval: float = 0.2,
             watch: tuple[Worker, ...] = ()):
    """Polls `condition()` until it returns something truthy; returns it.

    A poll that raises is retried (the store may not exist yet); on timeout the failure names
    the last error and the last value seen, not just "not ready". A watched worker that exits
    meanwhile fails the wait at once, with its output.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value = None
    while True:
        try:
            value = condition()
        except Exception as error:  # noqa: BLE001  (kept for the failure message)
            last_error, value = error, None
        else:
            last_error, last_value = None, value
        if value:
            return value
        for worker in watch:
            if worker.process.poll() is not None:
                raise AssertionError(
                    f"waiting for {what}: {worker.log.stem} exited with "
                    f"{worker.process.returncode}; last seen: {_seen(last_error, last_value)}; "
                    f"its output:\n{worker.output()[-3000:]}")
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last "
                                 f"seen: {_seen(last_error, last_value)}")
        time.sleep(interval)


def _seen(error: BaseException | None, value) -> str:
    if error is not None:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
    return repr(value)[:500]
