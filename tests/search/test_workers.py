"""`run --workers N [--gpus ...]`: what each worker process is given, and signal forwarding.

The worker command is swapped for a tiny Python program that reports its environment (or waits
for a signal), so these run on CPU in seconds; the real workers are exercised end to end in
test_distributed.py.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
from pathlib import Path

import pytest

from search.cli import main as cli
from search.errors import InputError
from search.study import workers
from search.study.workers import WorkerPlan, gpu_of_worker, parse_gpus, run_workers
from tests.search.studyhelp import write_spec

_REPORT_ENV = (
    "import os; print('gpu=' + os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')); "
    "print('storage=' + os.environ['FER_SEARCH_STORAGE'])"
)


def _plan(workers_: int, gpus: tuple[str, ...] | None) -> WorkerPlan:
    return WorkerPlan(spec_path=Path("s.yaml"), workers=workers_, storage_url="sqlite:///x.db",
                      tracking_uri="sqlite:///m.db", gpus=gpus)


def _run_reporting(monkeypatch, plan: WorkerPlan, program: str = _REPORT_ENV):
    """Runs the plan with each worker replaced by `program`; returns (result, lines by worker)."""
    monkeypatch.setattr(workers, "worker_command",
                        lambda plan, n_trials, threads: [sys.executable, "-c", program])
    sink = io.StringIO()
    result = run_workers(plan, sink=sink)
    lines: dict[int, list[str]] = {}
    for line in sink.getvalue().splitlines():
        prefix, _, text = line.partition("] ")
        lines.setdefault(int(prefix.removeprefix("[worker ")), []).append(text)
    return result, lines


@pytest.mark.parametrize(("text", "gpus"), [
    ("0", ("0",)), ("0,1", ("0", "1")), (" 2, 0 ,1", ("2", "0", "1")), ("01,3", ("1", "3")),
])
def test_gpu_lists(text, gpus):
    assert parse_gpus(text) == gpus


@pytest.mark.parametrize("text", ["", "a", "0,", "0,,1", "-1", "0,0", "1.5", "0;1", "²"])
def test_bad_gpu_lists_name_the_flag_and_the_value(text):
    with pytest.raises(InputError) as caught:
        parse_gpus(text)
    assert str(caught.value).startswith("--gpus: expected distinct GPU indices")
    assert repr(text) in str(caught.value)


def test_workers_take_gpus_round_robin():
    assert [gpu_of_worker(("0", "1"), i) for i in range(5)] == ["0", "1", "0", "1", "0"]
    assert [gpu_of_worker(("3",), i) for i in range(2)] == ["3", "3"]


def test_each_worker_process_sees_one_gpu(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")  # what the parent sees is not passed on
    result, lines = _run_reporting(monkeypatch, _plan(3, ("2", "0")))
    assert result.exit_codes == [0, 0, 0]
    assert {i: lines[i][0] for i in lines} == {1: "gpu=2", 2: "gpu=0", 3: "gpu=2"}
    assert all(out[1] == "storage=sqlite:///x.db" for out in lines.values())


def test_without_gpus_workers_inherit_the_parents_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    _, lines = _run_reporting(monkeypatch, _plan(2, None))
    assert [lines[1][0], lines[2][0]] == ["gpu=5", "gpu=5"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _, lines = _run_reporting(monkeypatch, _plan(1, None))
    assert lines[1][0] == "gpu=<unset>"


def test_a_bad_gpu_list_is_one_line_and_exit_2(tmp_path, capsys):
    spec = write_spec(tmp_path)
    code = cli.main(["run", str(spec), "--workers", "2", "--gpus", "0,x"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().splitlines() == ["error: --gpus: expected distinct GPU indices separated "
                                        "by commas, such as 0,1, but got '0,x'"]
    assert not (tmp_path / "studies" / "optuna.db").exists()  # nothing was created


def test_sigterm_is_forwarded_to_every_worker(monkeypatch):
    """The parent keeps waiting; each worker gets the signal (and here exits 0 on it)."""
    program = (
        "import signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda s, f: (print('got', s, flush=True), sys.exit(0)))\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
        "sys.exit(3)\n"
    )
    ready = threading.Event()

    class Sink(io.StringIO):
        def write(self, text):
            written = super().write(text)
            if self.getvalue().count("ready") == 2:  # both workers have their handler
                ready.set()
            return written

    monkeypatch.setattr(workers, "worker_command",
                        lambda plan, n_trials, threads: [sys.executable, "-c", program])

    def stop_when_ready():
        ready.wait(60)
        os.kill(os.getpid(), signal.SIGTERM)

    before = signal.getsignal(signal.SIGTERM)
    killer = threading.Thread(target=stop_when_ready, daemon=True)
    killer.start()
    sink = Sink()
    result = run_workers(_plan(2, None), sink=sink)
    killer.join(5)
    assert result.exit_codes == [0, 0], sink.getvalue()
    assert result.signal_received == signal.SIGTERM
    assert sink.getvalue().count(f"got {int(signal.SIGTERM)}") == 2
    assert result.exit_code == 0
    assert signal.getsignal(signal.SIGTERM) is before  # the parent's handler is restored


def _stuck_then(tmp_path: Path, stuck_times: int, then: int) -> str:
    """A worker that exits 75 (a stuck trial) its first `stuck_times` starts, then `then`;
    each start appends to a file, so the test counts the starts."""
    starts = tmp_path / "starts"
    return (
        "import pathlib, sys\n"
        f"p = pathlib.Path({str(starts)!r})\n"
        "with p.open('a') as f: f.write('x')\n"
        "n = len(p.read_text())\n"
        "print('start', n, flush=True)\n"
        f"sys.exit({workers.EXIT_TRIAL_STUCK} if n <= {stuck_times} else {then})\n"
    )


def test_a_worker_ending_with_a_stuck_trial_is_started_again(monkeypatch, tmp_path):
    """Exit 75 (the watchdog's, search.trial.deadline) means "restart me": the run starts the worker
    again, as compose's `restart: on-failure` does, and its final code is the restarted one's."""
    result, lines = _run_reporting(monkeypatch, _plan(1, None), _stuck_then(tmp_path, 2, 0))
    assert (tmp_path / "starts").read_text() == "xxx"
    assert result.exit_codes == [0] and result.restarts == 2 and result.exit_code == 0
    assert [line for line in lines[1] if line.startswith("start")] == [
        "start 1", "start 2", "start 3"]
    assert sum("after a stuck trial: starting it again" in line for line in lines[1]) == 2
    assert "2 restarted after a stuck trial" in result.summary()


def test_restarts_stop_after_the_limit_and_other_codes_are_final(monkeypatch, tmp_path):
    result, _ = _run_reporting(monkeypatch, _plan(1, None),
                               _stuck_then(tmp_path, 100, 0))
    assert len((tmp_path / "starts").read_text()) == workers.MAX_RESTARTS + 1
    assert result.exit_codes == [workers.EXIT_TRIAL_STUCK] and result.exit_code == 1
    (tmp_path / "starts").unlink()
    result, _ = _run_reporting(monkeypatch, _plan(1, None), _stuck_then(tmp_path, 0, 3))
    assert result.exit_codes == [3] and result.restarts == 0
