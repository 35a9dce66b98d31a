"""`trial_timeout`: a trial past its deadline stops at its next epoch boundary, is recorded FAIL
(`timed out after N s`) in Optuna and MLflow, is not retried, and the study goes on; a trial
stuck inside an epoch is recorded by the watchdog, which then ends the worker (exit 75)."""

from __future__ import annotations

import threading

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import trainer
from search import settings
from search.contracts import PERMANENT_FAILURE
from search.spec.loader import load_spec
from search.study.loop import run_study
from search.trial import deadline
from tests.search.studyhelp import urls, write_spec

SPACE = {"learning_rate": [3.0e-3], "batch_size": [32], "epochs": [3], "head_width": [16, 32]}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # Every trial alone, through `trainer.train` (which these tests wrap), with or without the
    # trainer's group training.
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    return tmp_path


def _trials(name: str, storage_url: str) -> dict[int, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name=name, storage=storage_url)
    return {t.params["head_width"]: t for t in study.get_trials()}


def test_a_trial_past_its_deadline_stops_at_an_epoch_boundary_and_is_not_retried(
        project, monkeypatch):
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    now = [0.0]
    monkeypatch.setattr(deadline, "clock", lambda: now[0])
    real_train = trainer.train

    def slow_wide_heads(config, data, on_epoch_end=None, **options):
        """The head_width 32 trial's epochs "take" 10 s each (a moved clock, not a sleep)."""
        def timed(epoch, metrics):
            if config.head_width == 32:
                now[0] += 10.0
            on_epoch_end(epoch, metrics)
        return real_train(config, data, timed, **options)

    monkeypatch.setattr(trainer, "train", slow_wide_heads)
    spec_path = write_spec(project, name="deadline", space=SPACE, trial_timeout=15)
    where = urls(project)
    summary = run_study(load_spec(spec_path), **where)
    assert summary.stopped_because == "study complete"

    trials = _trials("deadline", where["storage_url"])
    late, fine = trials[32], trials[16]
    assert fine.state == TrialState.COMPLETE and list(fine.intermediate_values) == [1, 2, 3]
    assert late.state == TrialState.FAIL
    assert late.user_attrs["reason"] == "timed out after 15 s"
    assert list(late.intermediate_values) == [1, 2]  # stopped at the boundary past 15 s
    assert late.user_attrs["failure"] == PERMANENT_FAILURE
    run = MlflowClient(where["tracking_uri"]).get_run(late.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "timed out after 15 s"

    again = run_study(load_spec(spec_path), **where)
    assert again.outcomes == [] and again.stopped_because == "study complete"
    assert len(optuna.load_study(study_name="deadline",
                                 storage=where["storage_url"]).get_trials()) == 2


def test_a_trial_stuck_inside_an_epoch_is_recorded_and_the_worker_exits(project, monkeypatch):
    """The watchdog records the trial from its own thread, then ends the process with 75 (a
    stand-in for os._exit here). The training never reaches an epoch boundary."""
    exited = threading.Event()
    codes = []

    def fake_exit(code):
        codes.append(code)
        exited.set()

    monkeypatch.setattr(deadline, "_exit", fake_exit)

    def stuck(config, data, on_epoch_end=None, **options):
        if not exited.wait(120):  # stuck in native code, as far as anyone can tell
            raise AssertionError("the watchdog never fired")
        raise RuntimeError("the process would be gone by now")

    monkeypatch.setattr(trainer, "train", stuck)
    space = {**SPACE, "head_width": [16]}
    spec_path = write_spec(project, name="stuck", space=space, trial_timeout=0.5)
    where = urls(project)
    with settings.override(FER_SEARCH_TIMEOUT_GRACE_S=0.2):
        summary = run_study(load_spec(spec_path), **where)

    assert codes == [deadline.EXIT_TRIAL_STUCK]
    (trial,) = _trials("stuck", where["storage_url"]).values()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "timed out after 0.5 s"  # the watchdog's record stands
    assert trial.user_attrs["failure"] == PERMANENT_FAILURE
    assert summary.outcomes[0].reason == "timed out after 0.5 s"
    run = MlflowClient(where["tracking_uri"]).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert run.data.tags["fail_reason"] == "timed out after 0.5 s"
    assert "stuck inside an epoch" in run.data.tags["timeout"]


def test_the_watchdog_waits_for_a_long_epoch_to_reach_its_boundary(monkeypatch):
    """Grace is at least twice the longest epoch seen: an epoch straddling the deadline is not
    taken for a stuck one."""
    now = [0.0]
    monkeypatch.setattr(deadline, "clock", lambda: now[0])
    limit = deadline.Deadline(100)
    for _ in range(3):
        now[0] += 40.0
        if now[0] > 100:
            with pytest.raises(deadline.TrialTimedOut, match="timed out after 100 s"):
                limit.check()
        else:
            limit.check()
    assert limit.hard_limit(grace=5) == 100 + 80
    assert limit.hard_limit(grace=300) == 100 + 300
    assert deadline.Deadline(None).hard_limit(grace=5) is None
