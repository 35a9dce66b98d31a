"""One bad trial costs only itself (issue 29).

A configuration that kills its worker process (the test hook `tests.search.poison_worker`, as an
out-of-memory kill would) shares a pass with healthy group-mates. Workers are started again when
they die, as a Kubernetes Job or a Slurm requeue would. The dead pass's trials are retried alone,
so the healthy ones complete and only the culprit uses up its retries (MAX_RETRY + 1 attempts at
most), and every FAIL says why, in Optuna and in MLflow, where no run is left RUNNING.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import FrozenTrial, TrialState

from search.cli.main import main
from search.contracts import (
    EXIT_FAILED_TRIALS,
    PASS_MATES_ATTR,
    TRIAL_REASON_ATTR,
    failed_for_good,
)
from search.spec.loader import load_spec
from search.spec.params import suggest_all
from search.storage.sessions import MAX_RETRY
from search.study.setup import make_sampler
from tests.infra.workers import Worker
from tests.infra.workers import worker_env as env_for
from tests.search.poison_worker import POISON_ENV
from tests.search.studyhelp import stores_fixture, urls, write_spec  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[2]
GRID = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [16, 32], "epochs": [2],
        "head_width": [16, 24]}
POISON = {"learning_rate": 1.0e-2, "batch_size": 16, "head_width": 24}


def spawn_poisoned(folder: Path, spec_path: Path, env: dict[str, str], name: str) -> Worker:
    """`fer-search worker SPEC --threads 1` with the poison hook installed."""
    log = folder / f"{name}.log"
    command = [sys.executable, "-m", "tests.search.poison_worker", "worker", str(spec_path),
               "--threads", "1"]
    env = {**env, "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])}
    with open(log, "wb") as sink:
        process = subprocess.Popen(command, cwd=folder, env=env, stdout=sink,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Worker(process, log)


def run_restarting(folder: Path, spec_path: Path, env: dict[str, str], workers: int, *,
                   max_starts: int = 16, timeout: float = 900) -> tuple[list[int], int]:
    """Runs `workers` poisoned workers, each started again when it is killed, until every one
    exits by itself; returns the exit codes of those that did, in order, and how many times a
    killed worker was started again."""
    running = {i: spawn_poisoned(folder, spec_path, env, f"w{i}-0") for i in range(workers)}
    starts, codes = workers, []
    deadline = time.monotonic() + timeout
    try:
        while running:
            for slot, worker in list(running.items()):
                code = worker.process.poll()
                if code is None:
                    continue
                if code != -signal.SIGKILL:
                    codes.append(code)
                    del running[slot]
                    continue
                assert starts < max_starts, f"{starts} worker starts: the study never ends"
                running[slot] = spawn_poisoned(folder, spec_path, env, f"w{slot}-{starts}")
                starts += 1
            if time.monotonic() > deadline:
                logs = "\n".join(w.output()[-2000:] for w in running.values())
                raise AssertionError(f"workers still running after {timeout:.0f} s:\n{logs}")
            time.sleep(0.3)
    finally:
        for worker in running.values():
            worker.kill()
    return codes, starts - workers


def is_poison(trial: FrozenTrial, poison: dict) -> bool:
    params = trial.params or trial.system_attrs.get("fixed_params") or {}
    return all(params.get(name) == value for name, value in poison.items())


def assert_only_the_culprit_failed(trials: list[FrozenTrial], poison: dict,
                                   completes: int) -> None:
    """Every healthy configuration complete; the poison's attempts all FAIL, at most
    MAX_RETRY + 1 of them, the last given up and saying so; every FAIL with its reason."""
    bad = [t for t in trials if is_poison(t, poison)]
    good = [t for t in trials if not is_poison(t, poison)]
    assert bad, "the poison configuration never ran: this test would prove nothing"
    assert all(t.state == TrialState.FAIL for t in bad), [(t.number, t.state) for t in bad]
    # A lineage: a trial and its retries (Optuna's `failed_trial` names the first). A random
    # study may draw the poison again later: a new trial, with retries of its own.
    lineages: dict[int, list[FrozenTrial]] = {}
    for trial in bad:
        lineages.setdefault(trial.system_attrs.get("failed_trial", trial.number), []).append(trial)
    for attempts in lineages.values():
        reasons = [t.user_attrs.get(TRIAL_REASON_ATTR) for t in attempts]
        assert len(attempts) <= MAX_RETRY + 1, reasons
        given_up = [t for t in attempts if failed_for_good(t)]
        assert len(given_up) == 1, reasons
        assert given_up[0].user_attrs[TRIAL_REASON_ATTR].startswith(
            f"killed its worker {MAX_RETRY + 1} times")
    assert sum(t.state == TrialState.COMPLETE for t in good) == completes
    assert not [t for t in good if failed_for_good(t)], "a healthy trial failed for good"
    for trial in trials:
        if trial.state == TrialState.FAIL:
            assert trial.user_attrs.get(TRIAL_REASON_ATTR), f"trial {trial.number}: no reason"
    # The group-mates that died with the culprit say so, and their copies completed alone.
    victims = [t for t in good if t.state == TrialState.FAIL]
    assert victims, "no healthy trial shared the culprit's pass"
    for victim in victims:
        assert "while training in one pass with trials" in victim.user_attrs[TRIAL_REASON_ATTR]
        assert victim.user_attrs.get(PASS_MATES_ATTR)


def assert_no_run_left_running(tracking_uri: str, study: str) -> None:
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(study)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    assert runs
    running = [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert not running, f"runs left RUNNING: {running}"
    for run in runs:
        if run.info.status == "FAILED" and run.data.tags.get("fer_search.kind") == "trial":
            assert run.data.tags.get("fail_reason"), run.info.run_name
            assert run.data.tags.get("mlflow.note.content"), run.info.run_name


def _trials(url: str, name: str) -> list[FrozenTrial]:
    from search.storage.sessions import storage_session

    with storage_session(url, read_only=True) as storage:
        return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.slow
def test_a_poison_grid_point_fails_alone_with_two_restarting_workers(tmp_path, capsys):
    """Issue 29's case: 8 points, one kills its worker every time it runs. The 7 others used
    to share its 4 deaths and end FAIL; now they complete, and `status` says why it failed."""
    spec = write_spec(tmp_path, name="poison-grid", space=GRID)
    where = urls(tmp_path)
    env = env_for(where["storage_url"], where["tracking_uri"],
                  **{POISON_ENV: json.dumps(POISON)})
    codes, restarts = run_restarting(tmp_path, spec, env, workers=2)
    assert codes == [0, 0]
    # The pass's death (one worker claims the group of 8), then the culprit's 3 alone: what
    # the poison point costs on its own, and no more.
    assert restarts == MAX_RETRY + 1
    trials = _trials(where["storage_url"], "poison-grid")
    assert_only_the_culprit_failed(trials, POISON, completes=7)
    assert_no_run_left_running(where["tracking_uri"], "poison-grid")

    capsys.readouterr()
    assert main(["status", "poison-grid", "--storage", where["storage_url"]]) == 0
    shown = capsys.readouterr().out
    assert "killed its worker" in shown and "1 failed for good" in shown


def _first_batch(spec_path: Path, size: int) -> list[dict]:
    """The params a fresh worker's first batch of asks draws (the sampler's seeded stream)."""
    spec = load_spec(spec_path)
    study = optuna.create_study(sampler=make_sampler(spec), direction=spec.direction)
    return [suggest_all(study.ask(), spec.space) for _ in range(size)]


@pytest.mark.slow
def test_a_poison_random_trial_fails_alone_in_batched_asks(tmp_path):
    """The same for a random study asking 8 trials at once: the batch's groups are re-run
    alone after the death, and the study still ends with its 8 complete trials."""
    space = {"learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
             "batch_size": [16, 32], "head_width": [16, 24]}
    spec = write_spec(tmp_path, name="poison-random", sampler="random", n_trials=8,
                      space=space, train={**_train(), "epochs": 2})
    drawn = _first_batch(spec, 8)
    poison = drawn[3]  # a learning rate drawn once: one configuration of the 8
    where = urls(tmp_path)
    env = env_for(where["storage_url"], where["tracking_uri"], FER_SEARCH_ASK_BATCH="8",
                  **{POISON_ENV: json.dumps(poison)})
    codes, _ = run_restarting(tmp_path, spec, env, workers=2)
    assert codes == [0, 0]
    trials = _trials(where["storage_url"], "poison-random")
    assert_only_the_culprit_failed(trials, poison, completes=8)
    assert_no_run_left_running(where["tracking_uri"], "poison-random")


def _train() -> dict:
    from tests.search.studyhelp import SPEC

    return dict(SPEC["train"])


@pytest.mark.slow
def test_max_failed_trials_stops_the_worker_with_its_own_exit_code(tmp_path):
    """`max_failed_trials: 1`: once the poison point is given up, the worker stops before its
    next claim, with one line and exit code 3 (final: its supervisor does not restart it)."""
    spec = write_spec(tmp_path, name="budget", space=GRID, max_failed_trials=1)
    where = urls(tmp_path)
    env = env_for(where["storage_url"], where["tracking_uri"],
                  **{POISON_ENV: json.dumps(POISON)})
    assert run_restarting(tmp_path, spec, env, workers=1)[0] == [EXIT_FAILED_TRIALS]
    trials = _trials(where["storage_url"], "budget")
    assert [t.number for t in trials if failed_for_good(t)] == \
        [t.number for t in trials if is_poison(t, POISON) and failed_for_good(t)]
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    stopped = [line for log in tmp_path.glob("w*.log") for line in log.read_text().splitlines()
               if line.startswith("error: ")]
    assert stopped == ["error: study 'budget' stopped: 1 trials failed for good "
                       "(max_failed_trials: 1); `fer-search status budget` lists them with "
                       "their reasons"], stopped
    assert_no_run_left_running(where["tracking_uri"], "budget")


@pytest.mark.postgres
def test_a_poison_grid_point_fails_alone_on_postgres_with_four_workers(pg_cluster, mlflow_server,
                                                                     tmp_path):
    spec = write_spec(tmp_path, name="poison-pg", space=GRID)
    env = env_for(pg_cluster.url(), mlflow_server.uri, **{POISON_ENV: json.dumps(POISON)})
    codes, _ = run_restarting(tmp_path, spec, env, workers=4, max_starts=24)
    assert codes == [0, 0, 0, 0]
    trials = _trials(pg_cluster.url(), "poison-pg")
    assert_only_the_culprit_failed(trials, POISON, completes=7)
    assert_no_run_left_running(mlflow_server.uri, "poison-pg")


def _queue_rows(storage, study: optuna.Study) -> dict:
    """The study's grid queue rows (search.queue.models.QueueItem), by point key."""
    from sqlalchemy import select

    from search.queue.items import transaction
    from search.queue.models import QueueItem

    study_id = storage.get_study_id_from_name(study.study_name)
    with transaction(storage.engine) as session:
        return {row.point_key: row for row in session.execute(
            select(QueueItem).where(QueueItem.study_id == study_id)).scalars()}


def test_a_lost_trials_run_whose_id_was_never_recorded_is_closed_with_the_reason(tmp_path):
    """The worker died between creating the trial's MLflow run and recording its id on the
    trial: the run is found by its tags (study, trial number) and closed FAILED, with the
    reason in its tag and description, when the trial is recovered."""
    from search import settings
    from search.storage.locks import study_lock
    from search.storage.sessions import open_storage
    from search.study import grid_queue
    from search.study.loop import StudyLoop
    from search.study.setup import LostRuns
    from search.tracking.runs import Tracker

    spec = load_spec(write_spec(tmp_path, name="orphan", space=GRID))
    where = urls(tmp_path)
    (tmp_path / "mlruns").mkdir()
    tracker = Tracker(where["tracking_uri"])
    experiment = tracker.experiment_id("orphan")
    lost = LostRuns()
    with settings.override(FER_SEARCH_HEARTBEAT_S=1, FER_SEARCH_GRACE_S=1):
        storage = open_storage(where["storage_url"], on_stale=lost, resilient=True)
        try:
            study = optuna.create_study(study_name="orphan", storage=storage)
            with study_lock(where["storage_url"], "orphan"):
                grid_queue.fill_queue(study, spec)
            (trial,) = grid_queue.claim_batch(study, storage, lambda params: None)
            run_id = tracker.start_trial_run(experiment, "", "orphan", trial.number,
                                             params={}, tags={})
            time.sleep(2.5)  # the worker is gone: no beat for longer than the 1 s grace
            StudyLoop(spec, study, storage, None, tracker, lost)._recover_lost_trials()
            trials = study.get_trials()
            rows = _queue_rows(storage, study)
        finally:
            storage.close()
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    run = MlflowClient(where["tracking_uri"]).get_run(run_id)
    assert failed.number == trial.number
    assert run.info.status == "FAILED"
    reason = failed.user_attrs[TRIAL_REASON_ATTR]
    # Its id never reached the trial: it died before training, so no attempt is counted.
    assert reason.startswith("worker lost (no heartbeat) before this trial started training")
    assert reason.endswith("not counted as an attempt")
    row = rows[grid_queue.point_key(grid_queue.params_of(failed))]
    # Its point is queued again (a grid's next attempt is its queue row, not a trial yet),
    # naming the failed trial, with no death counted against its retries.
    assert (row.state, row.trial_id) == ("queued", None)
    template = json.loads(row.template)
    assert template["system"]["failed_trial"] == failed.number
    assert template["system"]["retry_history"] == []
    assert run.data.tags["fail_reason"] == reason
    assert reason in run.data.tags["mlflow.note.content"]
