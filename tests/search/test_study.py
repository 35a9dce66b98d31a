"""Running studies end to end on tiny synthetic data: Optuna and MLflow agree, trial by trial."""

from __future__ import annotations

import signal

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import trainer
from search.errors import StudyError
from search.spec.loader import load_spec
from search.study import loop as study_module
from search.study import setup as study_setup
from search.study.loop import run_study
from tests.search.queuehelp import queue_counts
from tests.search.studyhelp import urls, write_spec


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A project folder as the working directory (data/, .cache/, mlruns/ land in it)."""
    monkeypatch.chdir(tmp_path)
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    return tmp_path


def _trials(spec_path, storage_url):
    spec = load_spec(spec_path)
    return optuna.load_study(study_name=spec.name, storage=storage_url).get_trials()


def _runs(tracking_uri, name):
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    trials = [r for r in runs if r.data.tags.get("fer_search.kind") == "trial"]
    studies = [r for r in runs if r.data.tags.get("fer_search.kind") == "study"]
    return trials, studies


def test_grid_runs_every_point_once_and_mlflow_matches_optuna(project):
    spec_path = write_spec(project)
    where = urls(project)
    summary = run_study(load_spec(spec_path), **where)

    trials = _trials(spec_path, where["storage_url"])
    assert summary.stopped_because == "study complete"
    assert len(trials) == 4 and all(t.state == TrialState.COMPLETE for t in trials)
    points = {(t.params["learning_rate"], t.params["head_width"]) for t in trials}
    assert points == {(lr, w) for lr in (3e-3, 1e-2) for w in (16, 32)}

    runs, studies = _runs(where["tracking_uri"], "tiny")
    assert len(studies) == 1 and studies[0].info.status == "FINISHED"
    assert studies[0].data.params["storage"] == where["storage_url"]
    by_id = {r.info.run_id: r for r in runs}
    assert len(runs) == len(trials)
    for t in trials:
        run = by_id[t.user_attrs["mlflow_run_id"]]
        assert run.info.status == "FINISHED"
        assert run.data.tags["optuna.trial_number"] == str(t.number)
        assert run.data.tags["mlflow.parentRunId"] == studies[0].info.run_id
        assert float(run.data.params["learning_rate"]) == t.params["learning_rate"]
        assert int(run.data.params["head_width"]) == t.params["head_width"]
        assert run.data.metrics["val_accuracy"] == pytest.approx(t.value)
        client = MlflowClient(where["tracking_uri"])
        history = client.get_metric_history(run.info.run_id, "val_loss")
        assert [m.step for m in history] == [1, 2]
        artifacts = {a.path for a in MlflowClient(where["tracking_uri"]).list_artifacts(
            run.info.run_id, "val")}
        assert {"val/confusion_matrix.png", "val/evaluation.json"} <= artifacts


def test_resume_runs_only_what_is_left(project):
    spec_path = write_spec(project)
    where = urls(project)
    first = run_study(load_spec(spec_path), n_trials=1, **where)
    assert len(first.outcomes) == 1
    second = run_study(load_spec(spec_path), **where)
    assert len(second.outcomes) == 3
    trials = _trials(spec_path, where["storage_url"])
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    assert len({tuple(sorted(t.params.items())) for t in trials}) == 4
    third = run_study(load_spec(spec_path), **where)
    assert third.outcomes == [] and third.stopped_because == "study complete"
    _, studies = _runs(where["tracking_uri"], "tiny")
    assert len(studies) == 1  # one parent run across the three invocations


def test_an_interrupted_trial_is_recorded_and_retried(project, monkeypatch):
    spec_path = write_spec(project)
    where = urls(project)
    real_train = trainer.train
    calls = []

    def interrupted_second_time(config, data, on_epoch_end=None, **options):
        calls.append(config)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(config, data, on_epoch_end, **options)

    monkeypatch.setattr(trainer, "train", interrupted_second_time)
    # Trials one at a time through `train` (a grid batch would go through `train_many`).
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(spec_path), **where)
    trials = _trials(spec_path, where["storage_url"])
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["reason"] == "interrupted"
    runs, studies = _runs(where["tracking_uri"], "tiny")
    statuses = {r.info.run_id: r.info.status for r in runs}
    assert statuses[failed[0].user_attrs["mlflow_run_id"]] == "KILLED"
    assert "RUNNING" not in statuses.values() and studies[0].info.status == "KILLED"

    monkeypatch.setattr(trainer, "train", real_train)
    run_study(load_spec(spec_path), **where)
    trials = _trials(spec_path, where["storage_url"])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4
    assert len({(t.params["learning_rate"], t.params["head_width"]) for t in complete}) == 4


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1 and max(trial.intermediate_values) >= 1


def test_pruned_trial_stops_early_and_its_run_is_killed(project, monkeypatch):
    spec_path = write_spec(project, space={
        "learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [4], "head_width": [16]})
    where = urls(project)
    monkeypatch.setattr(study_setup, "make_pruner", lambda spec: _PruneTrialOne())
    run_study(load_spec(spec_path), **where)
    trials = {t.number: t for t in _trials(spec_path, where["storage_url"])}
    assert trials[1].state == TrialState.PRUNED
    assert list(trials[1].intermediate_values) == [1]
    assert trials[0].state == TrialState.COMPLETE
    assert list(trials[0].intermediate_values) == [1, 2, 3, 4]
    run = MlflowClient(where["tracking_uri"]).get_run(trials[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_a_diverging_trial_fails_and_the_study_goes_on(project):
    spec_path = write_spec(project, space={
        "learning_rate": [1.0e30, 1.0e-2], "batch_size": [32], "epochs": [2], "head_width": [16]})
    where = urls(project)
    summary = run_study(load_spec(spec_path), **where)
    states = sorted(o.state.name for o in summary.outcomes)
    assert states == ["COMPLETE", "FAIL"]
    failed = next(t for t in _trials(spec_path, where["storage_url"]) if t.state == TrialState.FAIL)
    run = MlflowClient(where["tracking_uri"]).get_run(failed.user_attrs["mlflow_run_id"])
    assert run.info.status == "FAILED"
    assert "nan" in run.data.tags["fail_reason"]
    # a permanent failure is not re-queued by a rerun
    assert run_study(load_spec(spec_path), **where).outcomes == []


def test_consecutive_failures_stop_the_study(project):
    spec_path = write_spec(project, max_consecutive_failures=2, space={
        "learning_rate": [1.0e30, 1.0e31, 1.0e32], "batch_size": [32], "epochs": [2],
        "head_width": [16]})
    with pytest.raises(StudyError, match="2 trials failed in a row"):
        run_study(load_spec(spec_path), **urls(project))


def test_random_sampler_runs_n_trials(project):
    spec_path = write_spec(project, sampler="random", n_trials=3, space={
        "learning_rate": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
        "head_width": {"low": 8, "high": 64}, "epochs": [1, 2]})
    where = urls(project)
    run_study(load_spec(spec_path), **where)
    trials = _trials(spec_path, where["storage_url"])
    assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
    assert all(1e-4 <= t.params["learning_rate"] <= 1e-2 for t in trials)
    assert run_study(load_spec(spec_path), **where).outcomes == []  # budget already spent


def test_bad_data_stops_before_anything_is_created(project):
    spec_path = write_spec(project, data={"root": str(project / "no-such-expw")})
    where = urls(project)
    with pytest.raises(trainer.DataError):
        run_study(load_spec(spec_path), **where)
    assert not (project / "studies" / "optuna.db").exists()
    assert not (project / "mlruns").exists()


def test_grid_trials_differing_only_in_epochs_share_one_training(project):
    spec_path = write_spec(project, space={
        "learning_rate": [1.0e-2], "batch_size": [32], "epochs": [1, 2, 3], "head_width": [16]})
    where = urls(project)
    run_study(load_spec(spec_path), **where)
    trials = _trials(spec_path, where["storage_url"])
    client = MlflowClient(where["tracking_uri"])
    trained = {t.params["epochs"]: int(client.get_run(t.user_attrs["mlflow_run_id"]).data.tags[
        "epochs_trained"]) for t in trials}
    assert sum(trained.values()) == 3  # one training to 3 epochs answered all three trials
    assert max(trained.values()) == 3


def test_sigterm_mid_trial_finishes_that_trial_and_starts_no_other(project, monkeypatch):
    """`run_study` called as a library (no command installed handlers) behaves as `run`."""
    spec_path = write_spec(project)
    where = urls(project)
    real_train = trainer.train

    def signalled_during_the_first(config, data, on_epoch_end=None, **options):
        signal.raise_signal(signal.SIGTERM)  # as a supervisor would, mid-trial
        return real_train(config, data, on_epoch_end, **options)

    monkeypatch.setattr(trainer, "train", signalled_during_the_first)
    # Trials one at a time through `train` (a grid group would finish together).
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    summary = run_study(load_spec(spec_path), **where)
    assert summary.stopped_because == "stopped by SIGTERM"
    assert [o.state for o in summary.outcomes] == [TrialState.COMPLETE]
    states = sorted(t.state.name for t in _trials(spec_path, where["storage_url"]))
    assert states == ["COMPLETE"]  # the other three points wait in the queue, not as trials
    assert queue_counts(where["storage_url"], "tiny") == {"done": 1, "queued": 3}
    runs, studies = _runs(where["tracking_uri"], "tiny")
    assert [r.info.status for r in runs] == ["FINISHED"] and studies[0].info.status == "FINISHED"


def test_a_loop_asked_to_stop_before_it_starts_runs_nothing(project, monkeypatch):
    spec_path = write_spec(project)
    where = urls(project)
    seen = []

    class StopAtOnce(study_module.StudyLoop):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.request_stop("asked")
            self.request_stop("asked again")  # the first reason is kept
            seen.append(self)

    monkeypatch.setattr(study_module, "StudyLoop", StopAtOnce)
    summary = run_study(load_spec(spec_path), **where)
    assert summary.stopped_because == "asked" and summary.outcomes == [] and len(seen) == 1
    assert _trials(spec_path, where["storage_url"]) == []  # nothing claimed: no trial made
    assert queue_counts(where["storage_url"], "tiny") == {"queued": 4}


def _count_intermediate_writes(monkeypatch) -> dict[str, list]:
    """Spies on the storage's per-epoch writes: one value a call, or several in one."""
    from search.storage.retry import ResilientRDBStorage

    calls: dict[str, list] = {"one": [], "many": []}
    one, many = (ResilientRDBStorage.set_trial_intermediate_value,
                 ResilientRDBStorage.set_trial_intermediate_values)

    def write_one(self, trial_id, step, value):
        calls["one"].append(step)
        return one(self, trial_id, step, value)

    def write_many(self, trial_id, values):
        calls["many"].append(sorted(values))
        return many(self, trial_id, values)

    monkeypatch.setattr(ResilientRDBStorage, "set_trial_intermediate_value", write_one)
    monkeypatch.setattr(ResilientRDBStorage, "set_trial_intermediate_values", write_many)
    return calls


REPORT_SPACE = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [3],
                "head_width": [16]}


@pytest.mark.parametrize("report_s, writes", [
    ("3600", {"one": [], "many": [[1, 2, 3], [1, 2, 3]]}),  # each trial's epochs in one write
    ("0", {"one": [1, 2, 3, 1, 2, 3], "many": []}),  # every epoch as it ends
])
def test_without_a_pruner_epoch_values_are_written_together(project, monkeypatch, report_s,
                                                            writes):
    """No pruner reads the per-epoch values while a trial trains: they are written every
    FER_SEARCH_REPORT_S and at the trial's end, and the study holds every epoch either way."""
    monkeypatch.setenv("FER_SEARCH_REPORT_S", report_s)
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)  # one by one
    calls = _count_intermediate_writes(monkeypatch)
    spec_path = write_spec(project, space=REPORT_SPACE)
    where = urls(project)
    run_study(load_spec(spec_path), **where)
    trials = _trials(spec_path, where["storage_url"])
    assert calls == writes
    for trial in trials:
        history = MlflowClient(where["tracking_uri"]).get_metric_history(
            trial.user_attrs["mlflow_run_id"], "val_accuracy")
        assert trial.intermediate_values == {m.step: m.value for m in history}
        assert list(trial.intermediate_values) == [1, 2, 3]


def test_with_a_pruner_every_epoch_value_is_written_as_it_ends(project, monkeypatch):
    monkeypatch.setenv("FER_SEARCH_REPORT_S", "3600")
    monkeypatch.setattr(study_setup, "make_pruner",
                        lambda spec: optuna.pruners.MedianPruner(n_startup_trials=5))
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    calls = _count_intermediate_writes(monkeypatch)
    spec_path = write_spec(project, space=REPORT_SPACE)
    run_study(load_spec(spec_path), **urls(project))
    assert calls == {"one": [1, 2, 3, 1, 2, 3], "many": []}
