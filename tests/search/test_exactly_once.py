"""Exactly once (issue 18): the four interleavings that made two workers on a 4-point grid end
with 5 or 6 trials, each forced deterministically, without TensorFlow: the queue, the study
loop's recovery and the storage are driven directly. Since issue 31 the queue is its own table
(search.queue) and a point's Optuna trial is made when it is claimed.

Each test pauses one party at the exact point (a hook on a storage call, on a commit, or on the
recovery's per-trial callback), lets the other act, then lets the first go on, and checks that
every grid point has exactly one holder (a queued row, or a trial that is not FAIL), and the
number of Optuna trials.

1. A claimed trial is visible with part of its params (Optuna commits each suggest alone): a
   worker starting then must not take the point for free.
2. Recovery fails a dead worker's trial: a worker starting before the copy is queued must not
   queue the point too.
3. A recovery's FAIL write is cut before its commit and retried; meanwhile another worker's
   recovery fails the trial and re-queues it: the retry must not re-queue it again.
4. A write whose COMMIT landed but whose answer was lost is retried: an enqueue must not queue
   a point twice, an ask and a claim must not make a second trial, nor leave a claimed trial
   with nobody on it.

The stress test at the end runs real worker processes (search.study.dry_worker: the real claim,
heartbeat, report and tell, training replaced by a sleep) on PostgreSQL and SIGKILLs one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event
from sqlalchemy.exc import OperationalError

from search import settings
from search.contracts import TRIAL_REASON_ATTR
from search.queue import items
from search.queue.models import QueueItem
from search.spec.loader import load_spec
from search.storage.locks import study_lock
from search.storage.sessions import open_storage
from search.study import grid_queue, recovery
from search.study import loop as loop_module
from search.study import setup as study_setup
from tests.search.studyhelp import write_spec

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.fixture(params=BACKENDS)
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    return request.getfixturevalue("pg_cluster").url()


@pytest.fixture
def quick_heartbeat():
    """Trials beat every second and are stale after one (read when a storage is opened)."""
    with settings.override(FER_SEARCH_HEARTBEAT_S=1, FER_SEARCH_GRACE_S=1):
        yield


class Workers:
    """The storages of one test's 'workers' (one engine each, as separate processes have)."""

    def __init__(self, url: str, name: str) -> None:
        self.url, self.name = url, name
        self.storages: list = []

    def open(self, on_stale=None):
        storage = open_storage(self.url, on_stale=on_stale, resilient=True)
        storage.retry_s = 60.0
        self.storages.append(storage)
        study = optuna.create_study(study_name=self.name, storage=storage, load_if_exists=True)
        return storage, study

    def start(self, spec) -> None:
        """What a starting worker does with the queue: under the study lock, fill it."""
        _, study = self.open()
        with study_lock(self.url, self.name):
            grid_queue.fill_queue(study, spec)

    def close(self) -> None:
        for storage in self.storages:
            storage.close()


@pytest.fixture
def workers(url, request):
    name = f"{request.node.name}".replace("[", "-").replace("]", "")
    opened = Workers(url, name)
    yield opened
    opened.close()


def _spec(folder: Path):
    return load_spec(write_spec(folder, name="once"))  # a 4-point grid of 4 params


def _point(trial) -> str:
    """The grid point a trial was queued for (Optuna's `fixed_params`, complete from the
    start), as the test's own key."""
    return json.dumps(trial.system_attrs.get("fixed_params") or trial.params, sort_keys=True)


def _queued_points(study: optuna.Study, storage) -> list[str]:
    """The points whose queue row waits for a claim, as `_point` keys."""
    with items.transaction(storage.engine) as session:
        rows = session.query(QueueItem).filter(
            QueueItem.study_id == grid_queue.study_id_of(study, storage),
            QueueItem.state == "queued").all()
        return [json.dumps(json.loads(row.template)["point"], sort_keys=True) for row in rows]


def assert_exactly_once(study: optuna.Study, spec, total: int, storage=None) -> None:
    """Every grid point has one holder: its queued row, or one trial that is not FAIL; and the
    study has `total` Optuna trials."""
    trials = study.get_trials(deepcopy=False)
    queued = _queued_points(study, storage or grid_queue.private.storage_of(study))
    described = [(t.number, t.state.name, _point(t)) for t in trials] + [("queued", queued)]
    holders = Counter(_point(t) for t in trials if t.state != TrialState.FAIL)
    holders.update(queued)
    expected = {json.dumps(p, sort_keys=True) for p in grid_queue.grid_points(spec)}
    assert set(holders) == expected and set(holders.values()) == {1}, described
    assert len(trials) == total, described


def _stale_trial(study, storage) -> optuna.Trial:
    """A trial claimed by a worker that then died: it stops beating and goes stale."""
    (trial,) = grid_queue.claim_batch(study, storage, lambda params: None)
    storage.record_heartbeat(trial._trial_id)
    time.sleep(2.2)  # past the 1 s grace
    return trial


def _paused_call(action, wait_s: float = 3.0) -> None:
    """Runs `action` (the other party) in a thread and waits for it at most `wait_s`: a party
    blocked on the study lock is left waiting, and finishes after the first one lets go."""
    thread = threading.Thread(target=action, daemon=True)
    thread.start()
    thread.join(wait_s)
    _paused_call.threads.append(thread)


_paused_call.threads = []


@pytest.fixture(autouse=True)
def _join_parties():
    yield
    while _paused_call.threads:
        thread = _paused_call.threads.pop()
        thread.join(60)
        assert not thread.is_alive(), "the other party never finished"


def _on_commit_after(engine, statement: str, *, committed: bool) -> list:
    """The next commit on `engine` after a statement starting with `statement` fails once with
    a cut connection: before committing (`committed=False`), or after its COMMIT landed (the
    answer lost). Returns the list the hook appends to when it fires."""
    fired: list = []
    armed = threading.local()

    def seen(conn, cursor, sql, parameters, context, executemany):
        if not fired and " ".join(sql.split()).upper().startswith(statement.upper()):
            armed.value = True

    def commit(conn):
        if fired or not getattr(armed, "value", False):
            return
        armed.value = False
        fired.append(statement)
        if committed:
            conn.connection.dbapi_connection.commit()
        raise OperationalError("COMMIT", {}, Exception("server closed the connection "
                                                       "unexpectedly"))

    event.listen(engine, "before_cursor_execute", seen)
    event.listen(engine, "commit", commit)
    return fired


# ------------------------------------------------------------------- 1: partial params


def test_a_half_suggested_point_is_not_queued_again(workers, tmp_path):
    spec = _spec(tmp_path)
    storage, study = workers.open()
    workers.start(spec)
    (trial,) = grid_queue.claim_batch(study, storage, lambda params: None)
    name = next(iter(spec.grid))
    trial.suggest_categorical(name, spec.grid[name])  # 1 of its 4 params committed: pause
    workers.start(spec)  # another worker starts now
    assert_exactly_once(study, spec, total=1)


# ------------------------------------------------------------------- 2: re-queue outside the lock


def test_a_lost_point_is_requeued_once_when_a_worker_starts_meanwhile(
        workers, tmp_path, quick_heartbeat, monkeypatch):
    spec = _spec(tmp_path)
    lost = study_setup.LostRuns()
    storage, study = workers.open(on_stale=lost)
    workers.start(spec)
    _stale_trial(study, storage)
    original = study_setup.LostRuns.__call__

    def paused(self, study, trial, *reason):  # the dead trial is FAIL: pause, another starts
        _paused_call(lambda: workers.start(spec))
        original(self, study, trial, *reason)

    monkeypatch.setattr(study_setup.LostRuns, "__call__", paused)
    recovering = loop_module.StudyLoop(spec, study, storage, None, None, lost)
    recovering._recover_lost_trials()
    _join_parties_now()
    assert_exactly_once(study, spec, total=1)  # the dead trial's FAIL; its point queued once


def _join_parties_now() -> None:
    while _paused_call.threads:
        _paused_call.threads.pop().join(60)


# ------------------------------------------------------------------- 3: whose FAIL is it?


def test_a_retried_fail_does_not_requeue_another_workers_recovery(
        workers, tmp_path, quick_heartbeat, monkeypatch):
    spec = _spec(tmp_path)
    lost_a, lost_b = study_setup.LostRuns(), study_setup.LostRuns()
    storage_a, study_a = workers.open(on_stale=lost_a)
    storage_b, study_b = workers.open(on_stale=lost_b)
    workers.start(spec)
    _stale_trial(study_a, storage_a)
    worker_a = loop_module.StudyLoop(spec, study_a, storage_a, None, None, lost_a)
    worker_b = loop_module.StudyLoop(spec, study_b, storage_b, None, None, lost_b)
    cut = _on_commit_after(storage_a.engine, "UPDATE TRIALS SET STATE", committed=False)
    pauses = []

    def between_attempts(seconds):  # A's FAIL write was cut before its commit: B recovers
        if not pauses:
            pauses.append(seconds)
            _paused_call(worker_b._recover_lost_trials)

    monkeypatch.setattr("search.storage.retry.time.sleep", between_attempts)
    worker_a._recover_lost_trials()
    _join_parties_now()
    assert cut and pauses, "the hook never fired"
    assert_exactly_once(study_a, spec, total=1)


# ------------------------------------------------------------------- 4: lost answers


@pytest.fixture
def no_backoff(monkeypatch):
    monkeypatch.setattr("search.storage.retry.time.sleep", lambda seconds: None)
    monkeypatch.setattr("optuna.storages._rdb.storage.time.sleep", lambda seconds: None)


def test_an_enqueue_whose_answer_was_lost_queues_its_point_once(workers, tmp_path, no_backoff):
    spec = _spec(tmp_path)
    storage, study = workers.open()
    lost = _on_commit_after(storage.engine, "insert into fer_search_queue", committed=True)
    with study_lock(workers.url, workers.name):
        grid_queue.fill_queue(study, spec)
    assert lost, "the hook never fired"
    assert_exactly_once(study, spec, total=0)


def test_an_ask_whose_answer_was_lost_creates_one_trial(workers, no_backoff):
    storage, study = workers.open()
    lost = _on_commit_after(storage.engine, "INSERT INTO TRIALS", committed=True)
    trial = study.ask()
    assert lost, "the hook never fired"
    trials = study.get_trials(deepcopy=False)
    assert [t.number for t in trials] == [trial.number], [(t.number, t.state) for t in trials]


def test_a_claim_whose_answer_was_lost_is_ours(workers, tmp_path, no_backoff):
    spec = _spec(tmp_path)
    storage, study = workers.open()
    workers.start(spec)
    lost = _on_commit_after(storage.engine, "update fer_search_queue set state", committed=True)
    claimed = grid_queue.claim_batch(study, storage, lambda params: None)
    assert lost, "the hook never fired"
    running = [t.number for t in study.get_trials(states=(TrialState.RUNNING,))]
    assert [t.number for t in claimed] == running == [0]  # no claim without its worker
    assert_exactly_once(study, spec, total=1)


# ------------------------------------------------------------------- around the table


def test_a_random_studys_lost_trial_is_retried_once_with_its_params(workers, quick_heartbeat):
    """Random and TPE trials are asked, not queued: a dead worker's one gets its copy, with its
    params, in Optuna's own queue for `ask` to take, and is failed; once."""
    lost = study_setup.LostRuns()
    storage, study = workers.open(on_stale=lost)
    dead = study.ask()
    dead.suggest_float("x", 0.0, 1.0)
    storage.record_heartbeat(dead._trial_id)
    time.sleep(2.2)
    for _ in range(2):  # a second recovery finds nothing to do
        loop_module.StudyLoop(None, study, storage, None, None, lost)._recover_lost_trials()
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == dead.params and trials[1].system_attrs["failed_trial"] == 0
    assert study.ask().number == 1


def test_a_claim_whose_worker_died_before_making_its_trial_is_queued_again(
        workers, tmp_path, quick_heartbeat):
    """A worker claimed a point's row, then died before creating its trial: no heartbeat will
    ever say so, so the row itself goes back to the queue once the grace period has passed."""
    spec = _spec(tmp_path)
    storage, study = workers.open()
    workers.start(spec)
    study_id = grid_queue.study_id_of(study, storage)
    (row,) = items.claim(storage.engine, study_id, lambda queued: [queued[0].item_id],
                         "d" * 32)
    assert not recovery.has_lost(study, storage)  # within the grace period: maybe alive
    time.sleep(2.2)  # past the 1 s grace
    assert recovery.has_lost(study, storage)
    recovery.recover_lost(study, storage)
    assert items.counts(storage.engine, study_id) == {"queued": 4}
    assert_exactly_once(study, spec, total=0)


def test_a_claim_taken_back_before_its_trial_was_linked_runs_nothing(
        workers, tmp_path, monkeypatch):
    """A claim that lost its row (taken back as its worker looked dead) between making the
    point's trial and linking it: that trial is failed with the reason, not handed out, and the
    claim goes on to the queue's next row (the one taken back, queued again)."""
    spec = _spec(tmp_path)
    storage, study = workers.open()
    workers.start(spec)
    real_link = items.link
    taken: list[int] = []

    def taken_back_first(engine, item_id, token, trial_id):
        if not taken:  # another worker's recovery, just before this claim's first link
            taken.append(item_id)
            assert items.release(engine, item_id)
        return real_link(engine, item_id, token, trial_id)

    monkeypatch.setattr(items, "link", taken_back_first)
    (claimed,) = grid_queue.claim_batch(study, storage, lambda params: None)
    lost, running = study.get_trials(deepcopy=False)
    assert lost.state == TrialState.FAIL and claimed.number == running.number == 1
    assert lost.user_attrs[TRIAL_REASON_ATTR] == grid_queue.CLAIM_LOST
    assert _point(lost) == _point(running)  # the row taken back, claimed again
    assert_exactly_once(study, spec, total=2)


# ------------------------------------------------------------------- stress: real processes

STRESS_SPACE = {  # 32 points, one group (the trainer's key), claimed 2 heads at a time
    "learning_rate": [1.0e-3, 2.0e-3, 3.0e-3, 4.0e-3],
    "batch_size": [16, 32, 64, 128],
    "epochs": [2],
    "head_width": [16, 32],
}
STRESS_WORKERS = 8
STRESS_ROUNDS = 5


def _dry_worker(folder: Path, spec_path: Path, url: str, name: str,
                epoch_s: float) -> tuple[subprocess.Popen, Path]:
    """`python -m search.study.dry_worker`: the real claim, heartbeat, report and tell, with a
    sleep for training; quick heartbeats, so a dead worker's trial is stale after 2 s."""
    log = folder / f"{name}.log"
    env = {**os.environ, "FER_SEARCH_STORAGE": url, "FER_SEARCH_HEARTBEAT_S": "1",
           "FER_SEARCH_GRACE_S": "2", "FER_SEARCH_MAX_GROUP": "2", "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as sink:
        process = subprocess.Popen(
            [sys.executable, "-m", "search.study.dry_worker", str(spec_path),
             "--epoch-s", str(epoch_s)],
            cwd=folder, env=env, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return process, log


def _claimed(log: Path) -> set[int]:
    numbers: set[int] = set()
    for line in log.read_text(errors="replace").splitlines():
        if " trains [" in line:
            numbers.update(json.loads(line.split(" trains ", 1)[1]))
    return numbers


def _one_stress_round(url: str, folder: Path, name: str) -> None:
    folder.mkdir(parents=True)
    spec_path = write_spec(folder, name=name, space=STRESS_SPACE)
    processes = []
    try:
        # The victim starts first and claims before the others start (on a loaded machine the
        # others could otherwise finish the grid before it claims anything); its first epoch
        # outlasts the whole round (10 minutes, where the kill comes a few seconds after its
        # claim), so it is killed mid-trial however slowly the others start and claim.
        processes.append(_dry_worker(folder, spec_path, url, "worker-0", epoch_s=600.0))
        victim_process, victim_log = processes[0]
        deadline = time.monotonic() + 60
        while not _claimed(victim_log):
            assert victim_process.poll() is None, victim_log.read_text()[-3000:]
            assert time.monotonic() < deadline, "the victim never claimed a trial"
            time.sleep(0.05)
        for index in range(1, STRESS_WORKERS):  # staggered: each starts while others claim
            processes.append(_dry_worker(folder, spec_path, url, f"worker-{index}",
                                         epoch_s=0.15))
            if index == STRESS_WORKERS // 2:
                victim_process.send_signal(signal.SIGKILL)
                victim_process.wait()
            time.sleep(0.3)
        killed = _claimed(victim_log)
        for process, log in processes:
            if process is not victim_process:
                assert process.wait(timeout=180) == 0, log.read_text()[-3000:]
    finally:
        for process, _ in processes:
            if process.poll() is None:
                process.kill()
                process.wait()

    storage = open_storage(url, read_only=True)
    try:
        trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    finally:
        storage.close()
    described = [(t.number, t.state.name, _point(t)) for t in trials]
    complete = Counter(_point(t) for t in trials if t.state == TrialState.COMPLETE)
    expected = {json.dumps(p, sort_keys=True) for p in grid_queue.grid_points(load_spec(spec_path))}
    assert len(expected) == 32
    assert set(complete) == expected and set(complete.values()) == {1}, described
    others = [t for t in trials if t.state != TrialState.COMPLETE]
    assert others, "the killed worker's trial was not failed"
    for trial in others:  # only the killed worker's trials, FAILed by heartbeat
        assert trial.state == TrialState.FAIL and trial.number in killed, (killed, described)


@pytest.mark.postgres
@pytest.mark.slow
def test_many_workers_one_killed_run_every_point_once(pg_cluster, tmp_path):
    """8 worker processes, started 0.3 s apart, share a 32-point grid on PostgreSQL; one (the
    first, once it has claimed) is SIGKILLed mid-trial while the others start; 5 rounds, each
    a new study. Every point ends with exactly one COMPLETE trial, and the only other trials
    are the killed worker's, FAILed by heartbeat."""
    for round_ in range(STRESS_ROUNDS):
        _one_stress_round(pg_cluster.url(), tmp_path / f"round-{round_}", f"stress-{round_}")
