"""Trials resume where they died: a re-queued trial (by heartbeat after a SIGKILL, or by the
grid queue after Ctrl-C) picks up its checkpoint, its Optuna reports and MLflow run hold every
epoch once, its run names the run it carries on, and it ends where an uninterrupted training
ends.

NEEDS THE ENGINE: `test_an_interrupted_trial_resumes_from_its_checkpoint` and
`test_a_sigkilled_workers_trial_resumes_on_another_worker` need the trainer's checkpoints
(`trainer.train(..., resume=True)`, TrainResult.resumed_from_epoch; see ARCHITECTURE.md). With a
trainer that retrains from epoch 1 they FAIL on `resumed_from_epoch` (by design, not a skip).
The first test covers the search side alone, with a stand-in for the trainer's resume.
"""

from __future__ import annotations

import signal

import numpy as np
import optuna
import pytest
import sqlalchemy
from mlflow import MlflowClient
from optuna.trial import TrialState

import trainer
from search.spec.loader import load_spec
from search.study.loop import run_study
from search.tracking.runs import Tracker
from tests.infra.hooks import KILL_AT_EPOCH_ENV
from tests.infra.workers import spawn_worker
from tests.infra.workers import worker_env as env_for
from tests.search.studyhelp import SPEC, urls, write_spec

SPACE = {"learning_rate": [3.0e-3], "batch_size": [32], "epochs": [4], "head_width": [16]}


class _Died(BaseException):
    """The worker's process ends here (nothing below it records anything)."""


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # One trial at a time through `trainer.train`, with or without the trainer's groups.
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    return tmp_path


def _study_trials(name: str, storage_url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage_url).get_trials()


def _steps(client: MlflowClient, run_id: str, key: str = "val_accuracy") -> list[int]:
    return [m.step for m in client.get_metric_history(run_id, key)]


def _interrupt_at(monkeypatch, epoch: int, error: type[BaseException]) -> None:
    real_train = trainer.train

    def train(config, data, on_epoch_end=None, **options):
        def callback(e, metrics):
            on_epoch_end(e, metrics)
            if e == epoch:
                raise error()
        return real_train(config, data, callback, **options)

    monkeypatch.setattr(trainer, "train", train)


def test_a_requeued_trial_names_the_run_it_resumes(project, monkeypatch):
    """The heartbeat path: a worker dies after epoch 2 (its trial RUNNING, its run RUNNING);
    the next worker fails it as stale, Optuna's retry callback re-queues a copy, and the copy
    resumes (here a stand-in for the trainer says it restored 2 epochs and replays them)."""
    spec_path = write_spec(project, name="retry", space=SPACE)
    where = urls(project)
    _interrupt_at(monkeypatch, 2, _Died)
    with pytest.raises(_Died):
        run_study(load_spec(spec_path), **where)
    (dead,) = _study_trials("retry", where["storage_url"])
    assert dead.state == TrialState.RUNNING and list(dead.intermediate_values) == [1, 2]
    engine = sqlalchemy.create_engine(where["storage_url"])
    with engine.begin() as connection:  # its worker is gone: its heartbeat grows old
        connection.execute(sqlalchemy.text(
            "UPDATE trial_heartbeats SET heartbeat = '2000-01-01 00:00:00'"))
    engine.dispose()

    monkeypatch.undo()
    monkeypatch.chdir(project)
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    real_train = trainer.train

    def resuming_train(config, data, on_epoch_end=None, **options):
        result = real_train(config, data, on_epoch_end, **options)
        result.resumed_from_epoch = 2  # what the trainer's checkpoint would say
        return result

    monkeypatch.setattr(trainer, "train", resuming_train)
    run_study(load_spec(spec_path), **where)

    trials = {t.number: t for t in _study_trials("retry", where["storage_url"])}
    assert trials[dead.number].state == TrialState.FAIL
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert retry.state == TrialState.COMPLETE
    assert list(retry.intermediate_values) == [1, 2, 3, 4]
    assert retry.user_attrs["resumed_from_epoch"] == 2
    client = MlflowClient(where["tracking_uri"])
    old_run_id, new_run_id = dead.user_attrs["mlflow_run_id"], retry.user_attrs["mlflow_run_id"]
    assert old_run_id != new_run_id
    new_run = client.get_run(new_run_id)
    assert new_run.data.tags["resumed_from_run"] == old_run_id
    assert new_run.data.tags["resumed_from_epoch"] == "2"
    assert new_run.info.status == "FINISHED"
    assert _steps(client, new_run_id) == [1, 2, 3, 4]
    old_run = client.get_run(old_run_id)
    assert old_run.info.status == "FAILED" and "heartbeat" in old_run.data.tags["fail_reason"]
    assert old_run.data.tags["resumed_by_run"] == new_run_id


def _reference(project, name: str, space: dict) -> optuna.trial.FrozenTrial:
    """The same point trained without interruption, with caches of its own (nothing shared)."""
    spec_path = write_spec(project, name=name, space=space,
                           data={**SPEC["data"], "cache_dir": f".cache-{name}"})
    where = {"storage_url": f"sqlite:///{project}/studies/{name}.db",
             "tracking_uri": f"sqlite:///{project}/mlruns/{name}.db"}
    run_study(load_spec(spec_path), **where)
    (trial,) = _study_trials(name, where["storage_url"])
    assert trial.state == TrialState.COMPLETE
    return trial


def _weights(tracking_uri: str, run_id: str) -> list[np.ndarray]:
    return Tracker(tracking_uri).load_top_weights(run_id)


def assert_resumed_like_uninterrupted(resumed, reference, tracking_uri: str,
                                      reference_tracking_uri: str, dead_run_id: str) -> None:
    client = MlflowClient(tracking_uri)
    run = client.get_run(resumed.user_attrs["mlflow_run_id"])
    assert run.data.tags["resumed_from_run"] == dead_run_id
    # NEEDS THE ENGINE: a trainer without checkpoints retrains from epoch 1 and fails here.
    assert int(run.data.tags.get("resumed_from_epoch", "0")) >= 1, "the trial did not resume"
    epochs = list(range(1, SPACE["epochs"][0] + 1))
    assert list(resumed.intermediate_values) == epochs
    assert _steps(client, run.info.run_id) == epochs
    assert _steps(client, run.info.run_id, "val_loss") == epochs
    assert resumed.intermediate_values == reference.intermediate_values
    assert resumed.value == reference.value
    ours = _weights(tracking_uri, run.info.run_id)
    theirs = _weights(reference_tracking_uri, reference.user_attrs["mlflow_run_id"])
    assert len(ours) == len(theirs)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_an_interrupted_trial_resumes_from_its_checkpoint(project, monkeypatch):
    """Ctrl-C after epoch 2: the trial is recorded as interrupted; the next run re-queues its
    point, naming it, and the new trial resumes from the checkpoint. NEEDS THE ENGINE."""
    spec_path = write_spec(project, name="ctrl-c", space=SPACE)
    where = urls(project)
    _interrupt_at(monkeypatch, 2, KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(spec_path), **where)
    monkeypatch.undo()
    monkeypatch.chdir(project)
    monkeypatch.setattr(trainer, "batch_key", lambda config: None)
    run_study(load_spec(spec_path), **where)

    trials = _study_trials("ctrl-c", where["storage_url"])
    (interrupted,) = [t for t in trials if t.state == TrialState.FAIL]
    assert interrupted.user_attrs["reason"] == "interrupted"
    (resumed,) = [t for t in trials if t.state == TrialState.COMPLETE]
    assert resumed.user_attrs["failed_trial"] == interrupted.number
    reference = _reference(project, "ctrl-c-ref", SPACE)
    assert_resumed_like_uninterrupted(
        resumed, reference, where["tracking_uri"], f"sqlite:///{project}/mlruns/ctrl-c-ref.db",
        interrupted.user_attrs["mlflow_run_id"])


def test_a_sigkilled_workers_trial_resumes_on_another_worker(tmp_path):
    """A worker process SIGKILLed right after epoch 2; a second worker (short grace) takes the
    re-queued trial over and resumes it; a third, elsewhere, trains the point uninterrupted.
    NEEDS THE ENGINE."""
    spec_path = write_spec(tmp_path, name="killed", space=SPACE)
    where = urls(tmp_path)
    env = env_for(where["storage_url"], where["tracking_uri"], FER_SEARCH_GRACE_S="2")
    # The reference shares nothing with the killed study (its own folder, stores and caches):
    # it starts at once, on the core the doomed worker leaves idle, not after the kill.
    reference_folder = tmp_path / "reference"
    reference_folder.mkdir()
    reference_spec = write_spec(reference_folder, name="killed", space=SPACE)
    reference_where = urls(reference_folder)
    reference = spawn_worker(reference_folder, reference_spec,
                             env_for(reference_where["storage_url"],
                                     reference_where["tracking_uri"]), "reference")
    doomed = spawn_worker(tmp_path, spec_path, {**env, KILL_AT_EPOCH_ENV: "2"}, "doomed")
    rescuer = None
    try:
        assert doomed.wait(300) == -signal.SIGKILL, doomed.output()[-3000:]
        (dead,) = _study_trials("killed", where["storage_url"])
        assert dead.state == TrialState.RUNNING and list(dead.intermediate_values) == [1, 2]

        rescuer = spawn_worker(tmp_path, spec_path, env, "rescuer")
        assert rescuer.wait(300) == 0, rescuer.output()[-3000:]
        assert reference.wait(300) == 0, reference.output()[-3000:]
    finally:
        for worker in (doomed, rescuer, reference):
            if worker is not None:
                worker.kill()

    trials = {t.number: t for t in _study_trials("killed", where["storage_url"])}
    assert trials[dead.number].state == TrialState.FAIL
    (resumed,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == dead.number]
    assert resumed.state == TrialState.COMPLETE
    (uninterrupted,) = _study_trials("killed", reference_where["storage_url"])
    assert_resumed_like_uninterrupted(
        resumed, uninterrupted, where["tracking_uri"], reference_where["tracking_uri"],
        dead.user_attrs["mlflow_run_id"])
