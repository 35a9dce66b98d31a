"""Many workers, one study: exactly-once claims, `run --workers N`, stopping, dying, restarts.

Without a PostgreSQL server: claims across processes on SQLite, `fer-search run --workers 2`, and
a worker stopped by SIGINT or SIGTERM. With the throwaway cluster (marker `postgres`,
tests/infra/): two `fer-search worker` processes sharing a grid with a real
`mlflow server`, a worker killed with SIGKILL mid-trial, and the server restarted mid-study.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from search.queue import items
from search.storage import idempotent
from search.storage.retry import ResilientRDBStorage, is_transient, retry_transient
from search.storage.sessions import open_storage, storage_session
from search.study import grid_queue
from search.study.workers import (
    WorkerPlan,
    aggregate_exit_codes,
    split_trials,
    threads_per_worker,
    worker_command,
    worker_env,
)
from tests.infra.workers import Worker, spawn_worker, wait_for
from tests.infra.workers import worker_env as env_for
from tests.search.queuehelp import queue_counts
from tests.search.studyhelp import (  # noqa: F401 (fixture)
    Stores,
    race,
    stores_fixture,
    write_spec,
)

GRID = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [2],
        "head_width": [16, 32]}
# A trial caught mid-training: the worker pauses it after its epoch 2 (PAUSED_WORKER, below)
# until the test releases it (or kills the worker), so a short trial is caught as surely as a
# long one on any machine, and what follows trains only this many epochs.
CAUGHT_EPOCHS = 20


def _sqlite(folder: Path) -> tuple[str, str]:
    return (f"sqlite:///{folder}/studies/optuna.db", f"sqlite:///{folder}/mlruns/mlflow.db")




def _point(trial: FrozenTrial) -> tuple:
    return tuple(sorted(trial.params.items()))


def _grid_points(space: dict) -> set[tuple]:
    import itertools

    names = sorted(space)
    return {tuple(zip(names, values, strict=True))
            for values in itertools.product(*(space[n] for n in names))}


def _trial_runs(tracking_uri: str, name: str) -> tuple[list, list]:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return ([r for r in runs if r.data.tags.get("fer_search.kind") == "trial"],
            [r for r in runs if r.data.tags.get("fer_search.kind") == "study"])


def _mid_trial(stores: Stores, storage_url: str, name: str) -> FrozenTrial | None:
    """A RUNNING trial past its first epoch (its MLflow run made, its heartbeat beating).
    Raises while the store or the study does not exist yet (wait_for retries and reports it)."""
    for trial in stores.trials(storage_url, name):
        if (trial.state == TrialState.RUNNING and trial.intermediate_values
                and trial.user_attrs.get("mlflow_run_id")):
            return trial
    return None


def assert_every_point_complete_once(trials: list[FrozenTrial], space: dict) -> None:
    complete = Counter(_point(t) for t in trials if t.state == TrialState.COMPLETE)
    assert set(complete) == _grid_points(space), "a grid point is missing"
    assert max(complete.values()) == 1, f"a grid point ran twice: {complete}"
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]


def assert_runs_match_trials(trials: list[FrozenTrial], runs: list, studies: list) -> None:
    """One MLflow run per trial and one trial per run; none left RUNNING."""
    by_id = {r.info.run_id: r for r in runs}
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert sorted(run_ids) == sorted(by_id), "MLflow runs and trials do not match one to one"
    for trial in trials:
        run = by_id[trial.user_attrs["mlflow_run_id"]]
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        expected = "FINISHED" if trial.state == TrialState.COMPLETE else "FAILED"
        assert run.info.status == expected, (trial.number, trial.state, run.info.status)
    parents = {s.info.run_id for s in studies}
    assert all(r.data.tags["mlflow.parentRunId"] in parents for r in runs)


# ----------------------------------------------------------------- retries (no processes)


def _operational(message: str) -> Exception:
    from sqlalchemy.exc import OperationalError

    return OperationalError("SELECT 1", {}, Exception(message))


def test_transient_errors_are_told_from_permanent_ones():
    locked = _operational("database is locked")
    assert is_transient(locked)
    wrapped = optuna.exceptions.StorageInternalError("commit failed")
    wrapped.__cause__ = _operational("server closed the connection unexpectedly")
    assert is_transient(wrapped)
    assert not is_transient(_operational('connection to server at "db" failed: FATAL: '
                                         'password authentication failed for user "fer"'))
    assert not is_transient(ValueError("Cannot tell a FAIL trial."))


def test_retry_backs_off_until_the_database_answers(monkeypatch):
    sleeps = []
    monkeypatch.setattr("search.storage.retry.time.sleep", sleeps.append)
    answers = iter([_operational("connection refused"), _operational("connection refused")])

    def flaky():
        error = next(answers, None)
        if error is not None:
            raise error
        return "ok"

    assert retry_transient(flaky, deadline_s=60) == "ok"
    assert len(sleeps) == 2 and sleeps[1] > sleeps[0]  # exponential, jittered
    with pytest.raises(ValueError):
        retry_transient(lambda: (_ for _ in ()).throw(ValueError("bad")), deadline_s=60)
    with pytest.raises(Exception, match="connection refused"):
        retry_transient(lambda: (_ for _ in ()).throw(_operational("connection refused")),
                        deadline_s=0)


def _lose_first_answer(monkeypatch, module, name: str) -> list:
    """The first call of `module.name` (one transaction) commits, then its connection dies
    before the answer arrives; returns the calls made."""
    real = getattr(module, name)
    calls = []

    def commit_then_fail(*args):
        calls.append(args)
        result = real(*args)
        if len(calls) == 1:
            raise _operational("server closed the connection unexpectedly")
        return result

    monkeypatch.setattr(module, name, commit_then_fail)
    monkeypatch.setattr("search.storage.retry.time.sleep", lambda s: None)
    return calls


def _resilient(tmp_path: Path, monkeypatch) -> ResilientRDBStorage:
    """A study loop's storage (calls retried), closed when the test ends."""
    storage = open_storage(_sqlite(tmp_path)[0], resilient=True)
    monkeypatch.setattr(storage, "retry_s", 60.0)
    return storage


def test_a_tell_whose_answer_was_lost_is_not_an_error(tmp_path, monkeypatch):
    storage = _resilient(tmp_path, monkeypatch)
    study = optuna.create_study(study_name="lost-tell", storage=storage)
    trial = study.ask()
    calls = _lose_first_answer(monkeypatch, idempotent, "set_state")
    study.tell(trial, 0.5)  # the retry finds its own token on the trial: done
    assert len(calls) == 1
    assert study.get_trials()[0].state == TrialState.COMPLETE


def test_a_claim_whose_answer_was_lost_is_ours_and_beats(tmp_path, monkeypatch):
    """A claim of a queued point and its trial's creation each landed unseen: each is
    recognised by its token (tests/search/test_exactly_once.py has the interleavings), so the
    point is this worker's, with one trial; the trial's first heartbeat came in its creating
    transaction, so had the worker died it would still go stale and be re-queued."""
    storage = _resilient(tmp_path, monkeypatch)
    study = optuna.create_study(study_name="lost-claim", storage=storage)
    assert grid_queue.enqueue(study, [{"x": 1}]) == 1
    claims = _lose_first_answer(monkeypatch, items, "claim")
    creations = _lose_first_answer(monkeypatch, idempotent, "create_trial")
    claimed = grid_queue.claim_next(study, storage)
    assert claimed is not None and claimed.number == 0
    assert claimed.suggest_int("x", 0, 9) == 1  # the queued point's trial
    assert len(claims) == len(creations) == 1  # each retry found its first attempt's token
    monkeypatch.undo()
    (trial,) = study.get_trials()  # one trial, not one per attempt
    assert queue_counts(_sqlite(tmp_path)[0], "lost-claim") == {"claimed": 1}
    trial_id = trial._trial_id
    with storage.scoped_session() as session:
        from optuna.storages._rdb.models import TrialHeartbeatModel

        assert TrialHeartbeatModel.where_trial_id(trial_id, session) is not None


def test_a_closed_storage_holds_no_connection(tmp_path):
    url = _sqlite(tmp_path)[0]
    with storage_session(url) as storage:
        optuna.create_study(study_name="closed", storage=storage).ask()
        assert storage.engine.pool.checkedin() >= 1  # the pool kept the connection it used
    assert storage.engine.pool.checkedin() == 0 and storage.engine.pool.checkedout() == 0
    with open_storage(url, read_only=True) as again:  # the storage is a context manager too
        assert optuna.get_all_study_names(again) == ["closed"]
    assert again.engine.pool.checkedin() == 0


def test_a_heartbeat_is_never_retried(tmp_path, monkeypatch):
    """A beat that fails is dropped (the next comes an interval later); other calls of a
    study loop's storage are retried through the outage."""
    storage = _resilient(tmp_path, monkeypatch)
    study = optuna.create_study(study_name="beat", storage=storage)
    trial_id = study.ask()._trial_id
    calls = []

    def refused(self, trial_id):
        calls.append(trial_id)
        raise _operational("connection refused")

    monkeypatch.setattr(optuna.storages.RDBStorage, "record_heartbeat", refused)
    with pytest.raises(Exception, match="connection refused"):
        storage.record_heartbeat_once(trial_id)
    assert calls == [trial_id]  # once, on a storage that retries its other calls


def test_a_trial_end_does_not_wait_for_a_stuck_beat():
    """During an outage a beat may hang on a dead connection: the trial ends without it."""
    import threading

    from search.trial.runner import _Heartbeat

    released, entered = threading.Event(), threading.Event()

    class StuckStorage:
        def get_heartbeat_interval(self):
            return 0.01

        def record_heartbeat(self, trial_id):
            pass

        def record_heartbeat_once(self, trial_id):
            entered.set()
            released.wait(120)  # a beat stuck until the test lets go

    beat = _Heartbeat(StuckStorage(), 1)
    beat.JOIN_S = 0.1
    with beat:
        assert entered.wait(30), "the heartbeat thread never beat"
    assert not released.is_set()  # __exit__ returned while the beat was still stuck
    released.set()


# ------------------------------------------------------------------- the plan (no processes)


def test_workers_share_cores_and_trials():
    assert threads_per_worker(2, cores=2) == 1
    assert threads_per_worker(4, cores=2) == 1
    assert threads_per_worker(2, cores=16) == 8
    assert split_trials(None, 3) == [None, None, None]
    assert split_trials(7, 3) == [3, 2, 2]
    assert split_trials(2, 4) == [1, 1]  # no worker without a trial to run


def test_exit_codes_sum_up():
    assert aggregate_exit_codes([0, 0]) == 0
    assert aggregate_exit_codes([0, 1]) == 1
    assert aggregate_exit_codes([1, 2]) == 2
    assert aggregate_exit_codes([0, -9]) == 1
    assert aggregate_exit_codes([0, 0], signal.SIGTERM) == 0
    assert aggregate_exit_codes([0, 0], signal.SIGINT) == 130


def test_urls_reach_workers_by_environment_not_command_line():
    url = "postgresql+psycopg2://fer:hunter2@db/optuna"
    plan = WorkerPlan(spec_path=Path("s.yaml"), workers=2, storage_url=url,
                      tracking_uri="http://mlflow:5000", n_trials=5, threads=None)
    command = worker_command(plan, 3, threads=1)
    assert "hunter2" not in " ".join(command)
    assert command[-6:] == ["worker", "s.yaml", "--threads", "1", "--n-trials", "3"]
    env = worker_env(plan)
    assert env["FER_SEARCH_STORAGE"] == url and env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    from search.cli.main import build_parser

    args = build_parser().parse_args(command[3:])
    assert args.handler == "search.cli.study_commands:cmd_worker" and args.threads == 1


# --------------------------------------------------------------- claims across processes


def _claim_all(storage_url: str, study_name: str, results) -> None:
    with storage_session(storage_url, read_only=True) as storage:
        study = optuna.load_study(study_name=study_name, storage=storage)
        claimed = []
        while (trial := grid_queue.claim_next(study, storage)) is not None:
            claimed.append(trial.suggest_int("x", 0, 59))  # its point, as a worker reads it
    results.put(claimed)


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres",
                                                            marks=pytest.mark.postgres)])
def test_each_queued_point_is_claimed_by_one_process(backend, tmp_path, request):
    """Plain SQLite lets two processes claim one point (both read its row queued before either
    writes); BEGIN IMMEDIATE makes the claim atomic, as FOR UPDATE SKIP LOCKED does on
    PostgreSQL."""
    if backend == "sqlite":
        url = _sqlite(tmp_path)[0]
    else:
        url = request.getfixturevalue("pg_cluster").url()
    name = f"claims-{backend}"
    with storage_session(url) as storage:
        study = optuna.create_study(study_name=name, storage=storage)
        grid_queue.enqueue(study, [{"x": i} for i in range(60)])
    claimed = [x for answer in race(_claim_all, (url, name), 3, 120) for x in answer]
    assert sorted(claimed) == list(range(60)), Counter(claimed).most_common(3)
    assert queue_counts(url, name) == {"claimed": 60}


# ------------------------------------------------------------------------ SQLite, by the CLI


def _described(trials) -> list[tuple]:
    """Each trial's number, state, params and attributes: what a failed count needs to say."""
    return [(t.number, t.state.name, t.params, t.user_attrs) for t in trials]


def _local_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("FER_SEARCH_STORAGE", "MLFLOW_TRACKING_URI")}
    return {**env, "PYTHONUNBUFFERED": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def test_run_with_two_workers_on_sqlite(tmp_path, stores):
    spec = write_spec(tmp_path, name="local", space=GRID)
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", "run", str(spec), "--workers", "2"],
        cwd=tmp_path, env=_local_env(), capture_output=True, text=True, timeout=600,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "database is locked" not in output
    assert "[worker 1]" in output and "[worker 2]" in output
    assert "leaderboard: local" in result.stdout
    storage_url, tracking_uri = _sqlite(tmp_path)
    trials = stores.trials(storage_url, "local")
    assert len(trials) == 4, (_described(trials), output[-3000:])
    assert_every_point_complete_once(trials, GRID)
    runs, studies = _trial_runs(tracking_uri, "local")
    assert len(studies) == 1, "the study's parent run was made twice"
    assert_runs_match_trials(trials, runs, studies)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_worker_finishes_its_trial_and_exits_0(stop, tmp_path, stores):
    # Three trials, one head a group (a group would finish together: "its trial" would be all
    # three).
    space = {"learning_rate": [3.0e-3], "batch_size": [16, 32, 64],
             "epochs": [CAUGHT_EPOCHS], "head_width": [16]}
    spec = write_spec(tmp_path, name="stop", space=space)
    storage_url, tracking_uri = _sqlite(tmp_path)
    release = tmp_path / "signal-sent"
    worker = _spawn_paused_worker(tmp_path, spec, env_for(storage_url, tracking_uri,
                                                          FER_SEARCH_MAX_GROUP="1"),
                                  "worker", release)
    try:
        caught = wait_for(lambda: _mid_trial(stores, storage_url, "stop"), 180,
                          "a trial mid-training", watch=(worker,))
        worker.process.send_signal(stop)
        release.touch()  # the signal is in: the trial goes on from its epoch 2
        assert worker.wait(180) == 0, worker.output()[-3000:]
    finally:
        worker.kill()
    trials = {t.number: t for t in stores.trials(storage_url, "stop")}
    assert trials[caught.number].state == TrialState.COMPLETE, "the trial was not finished"
    # The other two points were never claimed: still queued, with no trial made for them.
    assert [t.state for t in trials.values()] == [TrialState.COMPLETE]
    assert queue_counts(storage_url, "stop") == {"done": 1, "queued": 2}
    client = MlflowClient(tracking_uri)
    assert client.get_run(caught.user_attrs["mlflow_run_id"]).info.status == "FINISHED"
    runs, studies = _trial_runs(tracking_uri, "stop")
    assert [r.info.status for r in runs] == ["FINISHED"]
    assert studies[0].info.status != "RUNNING"


# ----------------------------------------------------------------------- PostgreSQL topology


@pytest.mark.postgres
def test_a_sigkilled_workers_trial_is_requeued_and_completed(pg_cluster, mlflow_server,
                                                             tmp_path, stores):
    space = {"learning_rate": [3.0e-3], "batch_size": [32], "epochs": [CAUGHT_EPOCHS],
             "head_width": [16, 32]}
    spec = write_spec(tmp_path, name="pg-kill", space=space)
    env = env_for(pg_cluster.url(), mlflow_server.uri)
    # Paused after its epoch 2 and never released: killed mid-trial, its heartbeat beating.
    doomed = _spawn_paused_worker(tmp_path, spec, env, "doomed", tmp_path / "never")
    try:
        victim = wait_for(lambda: _mid_trial(stores, pg_cluster.url(), "pg-kill"), 180,
                          "the first worker's trial mid-training", watch=(doomed,))
        doomed.process.send_signal(signal.SIGKILL)
        doomed.process.wait()
    finally:
        doomed.kill()
    states = {t.number: t.state for t in stores.trials(pg_cluster.url(), "pg-kill")}
    assert states[victim.number] == TrialState.RUNNING  # killed mid-trial, nobody told
    rescuer = spawn_worker(tmp_path, spec, env, "rescuer")
    try:
        assert rescuer.wait(300) == 0, rescuer.output()[-3000:]
    finally:
        rescuer.kill()

    trials = stores.trials(pg_cluster.url(), "pg-kill")
    by_number = {t.number: t for t in trials}
    assert by_number[victim.number].state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == victim.params
    assert_every_point_complete_once(trials, space)
    # The victim's point went back to the queue and was claimed again: both rows done.
    assert queue_counts(pg_cluster.url(), "pg-kill") == {"done": 2}
    runs, studies = _trial_runs(mlflow_server.uri, "pg-kill")
    assert_runs_match_trials(trials, runs, studies)
    dead = MlflowClient(mlflow_server.uri).get_run(victim.user_attrs["mlflow_run_id"])
    assert dead.info.status == "FAILED" and "heartbeat" in dead.data.tags["fail_reason"]


# `fer-search worker` whose Nth trial ($FER_TEST_PAUSE_TRIAL, default 1: this process's first),
# at the end of its epoch 2, waits for the file named by $FER_TEST_RELEASE before it goes on
# (and reports the epoch): a test stops the database meanwhile, so the trial is mid-training
# when the server goes, on any machine, instead of racing its remaining epochs against the
# server's shutdown.
PAUSED_WORKER = """
import os, sys, time
from pathlib import Path

from search.trial.runner import TrialSession

release = Path(os.environ["FER_TEST_RELEASE"])
pause_trial = int(os.environ.get("FER_TEST_PAUSE_TRIAL", "1"))
real = TrialSession.on_epoch_end
sessions = []  # this process's trials, in the order they began


def paused(self, epoch, metrics):
    if self not in sessions:
        sessions.append(self)
    deadline = time.monotonic() + 600  # a safety net: the test releases it in seconds
    while (epoch == 2 and sessions.index(self) + 1 == pause_trial and not release.exists()
           and time.monotonic() < deadline):
        time.sleep(0.05)
    real(self, epoch, metrics)


TrialSession.on_epoch_end = paused
from search.cli.main import entry

sys.argv[0] = "fer-search"
entry()
"""


def _spawn_paused_worker(folder: Path, spec_path: Path, env: dict[str, str], name: str,
                         release: Path, trial: int = 1) -> Worker:
    """`spawn_worker`'s worker, with PAUSED_WORKER's pause at epoch 2 of its `trial`th trial
    until `release` exists."""
    log = folder / f"{name}.log"
    command = [sys.executable, "-c", PAUSED_WORKER, "worker", str(spec_path), "--threads", "1"]
    env = {**env, "FER_TEST_RELEASE": str(release), "FER_TEST_PAUSE_TRIAL": str(trial)}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Worker(process, log)


@pytest.mark.postgres
def test_workers_ride_out_a_database_restart(pg_cluster, mlflow_server, tmp_path, stores):
    """Two workers, trials one at a time (a group of the six would end all at once: no trial
    would be complete while another trains). Each worker's second trial waits after its epoch
    2 until the server is down (PAUSED_WORKER), so neither can run out of trials and exit
    before the restart, and their next reports meet the outage, on any machine."""
    space = {"learning_rate": [3.0e-3, 1.0e-2, 3.0e-2], "batch_size": [32], "epochs": [30],
             "head_width": [16, 32]}
    spec = write_spec(tmp_path, name="pg-restart", space=space)
    # A restart is not a death: a grace longer than the outage, so no live trial is re-queued.
    env = env_for(pg_cluster.url(), mlflow_server.uri, FER_SEARCH_GRACE_S="60",
                  FER_SEARCH_MAX_GROUP="1")
    release = tmp_path / "database-stopped"
    workers = [_spawn_paused_worker(tmp_path, spec, env, f"worker-{i}", release, trial=2)
               for i in (1, 2)]
    try:
        def mid_study():
            trials = stores.trials(pg_cluster.url(), "pg-restart")
            done = [t for t in trials if t.state == TrialState.COMPLETE]
            # Both workers mid-trial (each has begun training: its storage is connected).
            training = [t for t in trials if t.state == TrialState.RUNNING
                        and t.intermediate_values and t.user_attrs.get("mlflow_run_id")]
            return done if done and len(training) >= 2 else None

        before = wait_for(mid_study, 300, "a complete trial and two mid-training",
                          watch=tuple(workers))
        # The server down until a worker has met the outage (no fixed sleep), every connection
        # cut: heartbeats, reports and MLflow's own store all meet it.
        try:
            pg_cluster.pg_ctl("-m", "fast", "-w", "stop")
        finally:
            release.touch()  # the paused trials go on: their next reports meet the outage
        try:
            wait_for(lambda: any("database unavailable" in w.output() for w in workers), 120,
                     "a worker to meet the outage", watch=tuple(workers))
        finally:
            pg_cluster.start()
        for worker in workers:
            assert worker.wait(300) == 0, worker.output()[-3000:]
    finally:
        for worker in workers:
            worker.kill()

    assert any("database unavailable" in w.output() for w in workers), "no retry was needed"
    trials = stores.trials(pg_cluster.url(), "pg-restart")
    assert [t for t in trials if t.state != TrialState.COMPLETE] == []
    assert_every_point_complete_once(trials, space)
    after = {t.number: t for t in trials}
    for trial in before:  # nothing recorded before the restart was lost
        assert after[trial.number].value == trial.value
        assert after[trial.number].intermediate_values == trial.intermediate_values
    runs, studies = _trial_runs(mlflow_server.uri, "pg-restart")
    assert_runs_match_trials(trials, runs, studies)


# ------------------------------------------------------------- connections and outages (PG)

# Connections one fer-search process holds to the Optuna database at most: its storage's pool
# (the main thread's session and the heartbeat thread's, 2) and a study lock's own connection
# (1, while it is held).
PER_PROCESS = 3
CALLS = 25  # polls and status calls in the test's own process


def _connections(cluster) -> Counter:
    """Connections to the `optuna` database by application name (PGAPPNAME of each process),
    not counting the one asking."""
    import psycopg2

    connection = psycopg2.connect(host="127.0.0.1", port=cluster.port, user="fer",
                                  password=cluster.password, dbname="postgres",
                                  application_name="fer-test-sampler")
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT application_name FROM pg_stat_activity WHERE datname = "
                           "'optuna' AND pid <> pg_backend_pid()")
            return Counter(row[0] for row in cursor.fetchall())
    finally:
        connection.close()


@pytest.mark.postgres
def test_workers_share_a_grid_with_bounded_connections_given_back(
        pg_cluster, mlflow_server, tmp_path, stores, monkeypatch, capsys):
    from search.cli.main import main

    url = pg_cluster.url()
    baseline = _connections(pg_cluster)
    monkeypatch.setenv("PGAPPNAME", "fer-test-self")  # libpq names this process's connections
    spec = write_spec(tmp_path, name="pg-conns", space=GRID)
    workers = [spawn_worker(tmp_path, spec, env_for(url, mlflow_server.uri,
                                                    PGAPPNAME=f"fer-test-worker-{i}"),
                            f"worker-{i}") for i in (1, 2)]
    peak: Counter = Counter()
    deadline = time.monotonic() + 600
    try:
        while any(w.process.poll() is None for w in workers) and time.monotonic() < deadline:
            for name, count in _connections(pg_cluster).items():  # sampled while they run
                peak[name] = max(peak[name], count)
            time.sleep(0.05)  # the sampling rate, not a wait for anything
        for worker in workers:
            assert worker.wait(60) == 0, worker.output()[-3000:]
    finally:
        for worker in workers:
            worker.kill()
    assert peak["fer-test-worker-1"] >= 1 and peak["fer-test-worker-2"] >= 1, peak
    assert max(peak["fer-test-worker-1"], peak["fer-test-worker-2"]) <= PER_PROCESS, peak

    # Polls and one-shot commands in this process: a connection kept by each would be 25 over
    # the bound, well past PER_PROCESS (so 25 of each show a leak as 200 did, at an eighth of
    # the time: each status call loads the study).
    for _ in range(CALLS):  # polls through the test's one storage
        found = stores.trials(url, "pg-conns")
        assert len(found) == 4, (_described(found),
                                 [w.output()[-1500:] for w in workers])
    for _ in range(CALLS):  # one-shot commands: each opens and closes a storage
        assert main(["status", "pg-conns", "--storage", url]) == 0
    capsys.readouterr()
    after = _connections(pg_cluster)["fer-test-self"]
    print(f"peak connections per worker: {dict(peak)}; this process after {CALLS} polls and "
          f"{CALLS} status calls: {after}")  # shown with pytest -s
    assert after <= PER_PROCESS
    # The two workers shared the grid: every point once, each with its MLflow run, and the
    # workers' own counts add up to the grid.
    assert_every_point_complete_once(found, GRID)
    runs, studies = _trial_runs(mlflow_server.uri, "pg-conns")
    assert_runs_match_trials(found, runs, studies)
    ran = sum(int(w.output().rsplit("study complete: ", 1)[1].split()[0]) for w in workers)
    assert ran == len(found)
    stores.close()

    # The server notices a closed client within moments: polled, not slept on.
    wait_for(lambda: _connections(pg_cluster) == baseline, 30,
             f"connections back to the baseline {dict(baseline)}")


@pytest.mark.postgres
def test_a_trial_in_an_outage_finishes_when_the_database_is_back(pg_cluster, tmp_path,
                                                                  stores):
    """The database stops mid-trial; the trial's reports, beats and final tell meet the
    outage. Once the server is back the worker finishes within a backoff step (at most 10 s
    between attempts), not after a heartbeat's 5 minutes of retries.

    The trial waits after its epoch 2 until the server is down (PAUSED_WORKER), so its next
    report meets the outage, however fast its last epochs would have run."""
    space = {"learning_rate": [3.0e-3], "batch_size": [32], "epochs": [30], "head_width": [16]}
    spec = write_spec(tmp_path, name="pg-outage", space=space)
    # MLflow in a local file: only the Optuna database goes away. A grace longer than the
    # outage: the trial stays this worker's.
    env = env_for(pg_cluster.url(), f"sqlite:///{tmp_path}/mlruns/mlflow.db",
                  FER_SEARCH_GRACE_S="600")
    release = tmp_path / "database-stopped"
    worker = _spawn_paused_worker(tmp_path, spec, env, "worker", release)
    try:
        caught = wait_for(lambda: _mid_trial(stores, pg_cluster.url(), "pg-outage"), 300,
                          "a trial mid-training", watch=(worker,))
        try:
            pg_cluster.pg_ctl("-m", "fast", "-w", "stop")
        finally:
            release.touch()  # the trial goes on: its next report meets the outage
        try:
            wait_for(lambda: "database unavailable" in worker.output(), 120,
                     "the worker to meet the outage", watch=(worker,))
        finally:
            pg_cluster.start()
        # Training resumes, the last epochs run (~3 s) and the trial is told: well within this.
        assert worker.wait(90) == 0, worker.output()[-3000:]
    finally:
        worker.kill()
    trials = stores.trials(pg_cluster.url(), "pg-outage")
    assert [(t.number, t.state) for t in trials] == [(caught.number, TrialState.COMPLETE)]
    assert len(trials[0].intermediate_values) == 30  # no epoch's report was lost
