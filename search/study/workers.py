"""`fer-search run SPEC --workers N`: one study, N local `fer-search worker` processes.

The workers are ordinary `fer-search worker` processes, exactly what a user starts by hand on
other machines; they coordinate only through the storage (grid points are claimed from a queue,
exactly once). This module only starts them and looks after them:

- the study, its grid queue and its MLflow parent run are prepared here first, so the workers
  find them instead of racing to create them (and a fresh SQLite file or MLflow store gets its
  tables from one process);
- each worker gets cores // N TensorFlow threads (`--threads`), so N workers share the machine
  instead of each sizing its pools for all of it;
- with ``--gpus 0,1,...`` each worker sees one GPU (``CUDA_VISIBLE_DEVICES``), worker i the
  i-th listed, round-robin when there are more workers than GPUs (two workers then share one);
- the storage URL and tracking URI reach the workers through their environment, never their
  command line, which any user of the machine can read with `ps`;
- each worker's output is prefixed with its number;
- SIGINT and SIGTERM are forwarded (search.study.signals documents what each does);
- a worker that ends with EXIT_TRIAL_STUCK (75: its watchdog gave up on a trial stuck inside an
  epoch, see search.trial.deadline) is started again, as compose's `restart: on-failure` does, at
  most MAX_RESTARTS times per worker; it is given its share of `--n-trials` again (the trials it
  finished before are not subtracted), so such a run can end with more trials than asked;
- the exit code sums theirs up: 0 when all succeeded, 2 when one reported bad input, else 1;
  130 when the run was interrupted with SIGINT.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from search import settings
from search.contracts import (
    EXIT_BAD_INPUT,
    EXIT_FAILED_TRIALS,
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TRIAL_STUCK,
)
from search.errors import InputError
from search.spec.loader import StudySpec
from search.study import signals
from search.study.loop import run_study
from search.trial.data_provider import DataProvider

GPU_ENV = "CUDA_VISIBLE_DEVICES"
MAX_RESTARTS = 5  # per worker: a worker stuck again and again has a problem a restart won't fix
_POLL_S = 0.2


@dataclass(frozen=True)
class WorkerPlan:
    """What `run --workers N` starts.

    Attributes:
        spec_path: the study spec every worker runs.
        workers: how many worker processes.
        storage_url, tracking_uri: resolved by the caller; given to the workers by environment.
        n_trials: at most this many trials in all, shared out among the workers (None: until
            the study is done).
        timeout: each worker starts no trial after this many seconds.
        cache_dir: the crop and feature cache (None: the spec's).
        threads: TensorFlow threads per worker (None: cores // workers, at least 1).
        debug: workers show tracebacks.
        gpus: GPU indices the workers are spread over, one GPU per worker (None: each worker
            sees what this process sees).
    """

    spec_path: Path
    workers: int
    storage_url: str
    tracking_uri: str
    n_trials: int | None = None
    timeout: float | None = None
    cache_dir: Path | None = None
    threads: int | None = None
    debug: bool = False
    gpus: tuple[str, ...] | None = None


@dataclass
class WorkersResult:
    """How the workers ended."""

    exit_codes: list[int] = field(default_factory=list)
    signal_received: int | None = None
    restarts: int = 0

    @property
    def exit_code(self) -> int:
        return aggregate_exit_codes(self.exit_codes, self.signal_received)

    def summary(self) -> str:
        codes = ", ".join(str(code) for code in self.exit_codes) or "none started"
        text = f"{len(self.exit_codes)} workers done (exit codes: {codes})"
        if self.restarts:
            text += f"; {self.restarts} restarted after a stuck trial"
        if self.signal_received is not None:
            text += f"; stopped by {signal.Signals(self.signal_received).name}"
        return text


def available_cores() -> int:
    """Cores this process may run on (the affinity mask, as in a container), not the host's."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """cores // workers, at least 1: N workers share the machine's cores."""
    return max(1, (cores or available_cores()) // workers)


def split_trials(n_trials: int | None, workers: int) -> list[int | None]:
    """Each worker's share of `n_trials` (as even as can be; workers with no share are left
    out), or None for each worker when there is no limit."""
    if n_trials is None:
        return [None] * workers
    shares = [n_trials // workers + (1 if i < n_trials % workers else 0) for i in range(workers)]
    return [share for share in shares if share > 0]


def aggregate_exit_codes(codes: list[int], signal_received: int | None = None) -> int:
    """0 when every worker succeeded; 2 when one reported bad input (all would); 3 when the
    failure budget stopped them (`max_failed_trials`; the others exited 0); else 1. A run
    interrupted by SIGINT exits 130 whatever its workers said."""
    if signal_received == signal.SIGINT:
        return EXIT_INTERRUPTED
    if all(code == EXIT_OK for code in codes):
        return EXIT_OK
    if EXIT_BAD_INPUT in codes:
        return EXIT_BAD_INPUT
    if all(code in (EXIT_OK, EXIT_FAILED_TRIALS) for code in codes):
        return EXIT_FAILED_TRIALS
    return EXIT_FAILURE


def worker_command(plan: WorkerPlan, n_trials: int | None, threads: int) -> list[str]:
    """The `fer-search worker` command line of one worker (no URLs: see `worker_env`)."""
    command = [sys.executable, "-m", "search.cli"]
    if plan.debug:
        command.append("--debug")
    command += ["worker", str(plan.spec_path), "--threads", str(threads)]
    if n_trials is not None:
        command += ["--n-trials", str(n_trials)]
    if plan.timeout is not None:
        command += ["--timeout", str(plan.timeout)]
    if plan.cache_dir is not None:
        command += ["--cache-dir", str(plan.cache_dir)]
    return command


def worker_env(plan: WorkerPlan, index: int = 0) -> dict[str, str]:
    """The environment of worker `index` (0-based): ours, plus the storage and tracking URIs
    (which outrank the spec's, as the caller's flags did), unbuffered output (lines arrive as
    they happen) and, with `plan.gpus`, the one GPU it may use."""

    env = {
        **os.environ,
        settings.STORAGE_ENV: plan.storage_url,
        "MLFLOW_TRACKING_URI": plan.tracking_uri,
        "PYTHONUNBUFFERED": "1",
    }
    if plan.gpus:
        env[GPU_ENV] = gpu_of_worker(plan.gpus, index)
    return env


def gpu_of_worker(gpus: tuple[str, ...], index: int) -> str:
    """The GPU of worker `index` (0-based): the list in order, round-robin past its end."""
    return gpus[index % len(gpus)]


def parse_gpus(text: str) -> tuple[str, ...]:
    """``"0,1,3"`` -> ``("0", "1", "3")``: distinct GPU indices (integers >= 0), as CUDA numbers
    them (``CUDA_VISIBLE_DEVICES``).

    Raises:
        InputError: anything else (one line, naming the flag, the rule and the value).
    """
    parts = [part.strip() for part in text.split(",")]
    if all(part.isascii() and part.isdigit() for part in parts):
        gpus = tuple(str(int(part)) for part in parts)
        if len(set(gpus)) == len(gpus):
            return gpus
    raise InputError(
        f"--gpus: expected distinct GPU indices separated by commas, such as 0,1, "
        f"but got {text!r}"
    )


def prepare_study(
    spec: StudySpec, *, storage_url: str, tracking_uri: str, cache_dir: Path | None = None
) -> None:
    """Creates or resumes the study, fills its grid queue and opens its MLflow parent run, and
    builds the dataset's crop cache, without running a trial (`run_study` with n_trials=0).

    Workers started at the same moment would otherwise each find no study and no parent run,
    and create the parent run twice.
    """
    run_study(spec, storage_url=storage_url, tracking_uri=tracking_uri, n_trials=0,
              data=DataProvider(spec, cache_dir, storage_url=storage_url))


def run_workers(plan: WorkerPlan, sink: TextIO | None = None) -> WorkersResult:
    """Starts the plan's workers, relays their output to `sink` (stderr) with a `[worker i]`
    prefix, forwards SIGINT/SIGTERM to them, and waits for all of them.

    Returns:
        Their exit codes, and the signal that stopped the run, if any.
    """
    sink = sink or sys.stderr
    result = WorkersResult()
    lock = threading.Lock()
    processes: list[subprocess.Popen] = []  # each worker's current process (signals reach it)
    pumps: list[threading.Thread] = []
    shares = split_trials(plan.n_trials, plan.workers)
    threads = plan.threads or threads_per_worker(len(shares))

    def start(index: int) -> subprocess.Popen:
        process = subprocess.Popen(
            worker_command(plan, shares[index], threads),
            env=worker_env(plan, index),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            process_group=0,  # a terminal's Ctrl-C reaches them through us only
        )
        pump = threading.Thread(target=_relay, args=(process, f"[worker {index + 1}] ", sink,
                                                     lock), daemon=True)
        pump.start()
        pumps.append(pump)
        return process

    with _forwarding_signals(processes, result):
        try:
            processes.extend(start(index) for index in range(len(shares)))
            codes: list[int | None] = [None] * len(processes)
            restarts = [0] * len(processes)
            while None in codes:
                for index, process in enumerate(processes):
                    code = None if codes[index] is not None else process.poll()
                    if code is None:
                        continue
                    if (code == EXIT_TRIAL_STUCK and result.signal_received is None
                            and restarts[index] < MAX_RESTARTS):
                        restarts[index] += 1
                        result.restarts += 1
                        with lock:
                            sink.write(f"[worker {index + 1}] exited {code} after a stuck "
                                       f"trial: starting it again ({restarts[index]} of at "
                                       f"most {MAX_RESTARTS})\n")
                            sink.flush()
                        processes[index] = start(index)
                    else:
                        codes[index] = code
                if None in codes:
                    time.sleep(_POLL_S)
            result.exit_codes = [int(code) for code in codes if code is not None]
        finally:
            _stop_leftovers(processes)
            for pump in pumps:
                pump.join(timeout=5)
    return result


def _relay(process: subprocess.Popen, prefix: str, sink: TextIO, lock: threading.Lock) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            sink.write(prefix + line if line.endswith("\n") else prefix + line + "\n")
            sink.flush()


def _forwarding_signals(processes: list[subprocess.Popen], result: WorkersResult):
    """While the workers run, SIGINT and SIGTERM go to each of them instead of stopping this
    process (search.study.signals, "run --workers N")."""

    def forward(signum: int) -> None:
        if result.signal_received != signal.SIGINT:  # an interrupt is what the user saw last
            result.signal_received = signum
        for process in processes:
            if process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    return signals.forwarding(forward)


def _stop_leftovers(processes: list[subprocess.Popen]) -> None:
    """Workers still alive when we leave early (an error here): SIGTERM, then SIGKILL."""
    for process in processes:
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                process.terminate()
    for process in processes:
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
