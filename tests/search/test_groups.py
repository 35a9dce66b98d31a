"""Grid groups: claimed together (exactly once, across racing processes), trained in one pass,
each trial still with its own reports, pruning, MLflow run, tell and heartbeat.

The group training itself is the trainer's (`trainer.train_many`, tests/trainer); here a
stand-in with the same contract trains each member with the real `trainer.train`, so what is
tested is the search side: who claims what, and how each member is recorded.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState

import trainer
from search import settings
from search.spec.loader import load_spec
from search.storage.locks import study_lock
from search.storage.sessions import open_storage
from search.study import grid_queue
from search.study import setup as study_setup
from search.study.batches import Batching, claim
from search.study.loop import run_study
from search.trial.runner import _Heartbeat
from tests.search.studyhelp import race, urls, write_spec

ROOT = Path(__file__).resolve().parents[2]


def _by_batch(params: dict) -> int:
    """A batch key for the queue tests: points go together by batch size (module level:
    picklable)."""
    return params["batch_size"]


def _up_to(n: int):
    """A `fits` for the queue tests: at most `n` trials a batch."""
    return lambda batch: len(batch) <= n


def _queue(url: str, name: str, sizes=(16, 32, 64, 128), rates=12):
    """A study whose queue holds `rates` x `sizes` points; returns it and its storage."""
    storage = open_storage(url)
    study = optuna.create_study(study_name=name, storage=storage)
    grid_queue.enqueue(study, [{"learning_rate": 1e-4 * (i + 1), "batch_size": size}
                               for i in range(rates) for size in sizes])
    return study, storage


def _params(study: optuna.Study, number: int) -> dict:
    return grid_queue.params_of(study.get_trials(deepcopy=False)[number])


# ---------------------------------------------------------------------------------- claims


def test_a_group_is_claimed_together_up_to_its_cap(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    study, storage = _queue(url, "cap", sizes=(16, 32), rates=5)  # two groups of 5
    first = grid_queue.claim_batch(study, storage, _by_batch, _up_to(3))
    assert len(first) == 3
    assert len({_params(study, t.number)["batch_size"] for t in first}) == 1
    taken = [first]
    while group := grid_queue.claim_batch(study, storage, _by_batch, _up_to(3)):
        taken.append(group)
    sizes = sorted(len(group) for group in taken)
    assert sizes == [2, 2, 3, 3]  # each group of 5 as 3 + 2: never mixed, never over the cap
    for group in taken:
        assert len({_params(study, t.number)["batch_size"] for t in group}) == 1
    numbers = [t.number for group in taken for t in group]
    assert sorted(numbers) == list(range(10))
    assert grid_queue.count(study, TrialState.RUNNING) == 10


def test_a_claim_takes_trials_while_they_fit_and_skips_one_over_the_cap(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name="heads", storage=storage)
    grid_queue.enqueue(study, [{"learning_rate": rate, "batch_size": 32, "epochs": epochs}
                               for rate in (1e-4, 2e-4, 3e-4) for epochs in (10, 30)])

    def two_rates(batch):  # as the trainer's cost: points equal but for epochs are one head
        return len({params["learning_rate"] for params in batch}) <= 2

    first = grid_queue.claim_batch(study, storage, _by_batch, two_rates)
    points = [_params(study, t.number) for t in first]
    # A third rate over the cap is skipped; the later points of the first two still fit.
    assert len(first) == 4 and len({p["learning_rate"] for p in points}) == 2
    assert sorted(p["epochs"] for p in points) == [10, 10, 30, 30]
    rest = grid_queue.claim_batch(study, storage, _by_batch, two_rates, max_trials=1)
    assert len(rest) == 1  # --n-trials' remainder caps trials whatever fits
    assert len(grid_queue.claim_batch(study, storage, _by_batch, two_rates)) == 1
    assert grid_queue.claim_batch(study, storage, _by_batch, two_rates) == []


def test_batches_are_what_the_trainer_says_shares_and_fits(tmp_path):
    """Search's view of the trainer's protocol, on the quickstart's grid: its 24 points share
    one `batch_key`, points equal but for `epochs` cost one head (`batch_cost`), so
    FER_SEARCH_MAX_GROUP=8 claims 8 heads (up to 16 trials) at once, looking at 16 rows."""
    spec = load_spec(ROOT / "studies" / "quickstart.yaml")
    batching = Batching(spec)
    points = grid_queue.grid_points(spec)
    assert len({batching.key(p) for p in points}) == 1 and None not in {
        batching.key(p) for p in points}
    one_head = [{**points[0], "epochs": epochs} for epochs in (10, 30)]
    other = {**points[0], "head_width": 64 if points[0]["head_width"] == 256 else 256}
    with settings.override(FER_SEARCH_MAX_GROUP=1):
        assert batching.fits(one_head) and not batching.fits([*one_head, other])
    assert batching.window() == 16
    assert batching.key({**points[0], "learning_rate": -1.0}) is None  # trains, fails, alone

    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    study = optuna.create_study(study_name=spec.name, storage=storage)
    with study_lock(storage.url, spec.name):
        grid_queue.fill_queue(study, spec, batching.key)
    claimed = []
    while batch := claim(study, storage, batching):
        claimed.append(batch)
    heads = [Counter(tuple(sorted((k, v) for k, v in _params(study, t.number).items()
                               if k != "epochs")) for t in batch) for batch in claimed]
    assert sum(len(batch) for batch in claimed) == 24
    # The first claim is 8 heads (of its 16 rows, some heads' 2 epoch counts both), none more.
    assert len(heads[0]) == 8 and all(len(h) <= 8 for h in heads)
    assert 8 < len(claimed[0]) <= 16


def test_points_the_trainer_cannot_group_are_claimed_alone(tmp_path):
    study, storage = _queue(f"sqlite:///{tmp_path}/optuna.db", "alone", sizes=(32,), rates=3)
    groups = []
    while group := grid_queue.claim_batch(study, storage, lambda params: None):
        groups.append(group)
    assert [len(g) for g in groups] == [1, 1, 1]


def test_a_claim_after_a_partial_one_takes_the_next_group_whole(tmp_path):
    """The queue alternates two groups' points. A claim capped at one point takes the first;
    the next claim starts at the next queued row, of the other group, and takes that group
    whole without splitting the first; the first group's rest is left for the one after."""
    study, storage = _queue(f"sqlite:///{tmp_path}/optuna.db", "race", sizes=(16, 32), rates=4)
    winner = grid_queue.claim_batch(study, storage, _by_batch, _up_to(1))  # the first only
    assert len(winner) == 1
    taken_size = _params(study, winner[0].number)["batch_size"]
    second = grid_queue.claim_batch(study, storage, _by_batch, _up_to(8))
    assert len(second) == 4 and {_params(study, t.number)["batch_size"] for t in second} == {
        32 if taken_size == 16 else 16}
    rest = grid_queue.claim_batch(study, storage, _by_batch, _up_to(8))
    assert len(rest) == 3 and {_params(study, t.number)["batch_size"] for t in rest} == {
        taken_size}
    assert grid_queue.claim_batch(study, storage, _by_batch, _up_to(8)) == []


def _claim_groups(url: str, name: str, results) -> None:
    storage = open_storage(url)
    study = optuna.load_study(study_name=name, storage=storage)
    groups = []
    while group := grid_queue.claim_batch(study, storage, _by_batch, _up_to(5)):
        groups.append([(t.number, _params(study, t.number)["batch_size"]) for t in group])
    results.put(groups)


def test_groups_are_claimed_exactly_once_by_racing_processes(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    _queue(url, "racing", sizes=(16, 32, 64, 128), rates=12)  # 48 trials, 4 groups of 12
    groups = [g for answer in race(_claim_groups, (url, "racing"), 2, 180) for g in answer]
    numbers = [number for group in groups for number, _ in group]
    assert sorted(numbers) == list(range(48)), Counter(numbers).most_common(3)
    for group in groups:
        assert 1 <= len(group) <= 5
        assert len({size for _, size in group}) == 1, f"a claim mixed groups: {group}"


def test_one_heartbeat_beats_every_claimed_trial(tmp_path):
    from optuna.storages._rdb.models import TrialHeartbeatModel

    study, storage = _queue(f"sqlite:///{tmp_path}/optuna.db", "beats", sizes=(32,), rates=3)
    group = grid_queue.claim_batch(study, storage, _by_batch)
    ids = [t._trial_id for t in group]
    with storage.scoped_session() as session:  # a claim beats once, at once
        for trial_id in ids:
            session.query(TrialHeartbeatModel).filter_by(trial_id=trial_id).delete()
        session.commit()
    with _Heartbeat(storage, ids), storage.scoped_session() as session:
        beating = [TrialHeartbeatModel.where_trial_id(i, session) is not None for i in ids]
    assert len(ids) == 3 and all(beating)


# ------------------------------------------------------------------------- one pass, k trials


class _PruneOne(optuna.pruners.BasePruner):
    """Prunes the (1e-2, 32) point after its first epoch; nothing else."""

    def prune(self, study, trial):
        return (trial.params.get("learning_rate"), trial.params.get("head_width")) == (1e-2, 32)


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    return tmp_path


def _fake_group_training(monkeypatch) -> list[list]:
    """`trainer.batch_key` and `trainer.train_many` stand-ins with the trainer's contract: one
    key per batch size; each member trained alone by the real `train`, an exception raised by
    its callback stopping that member only."""
    calls: list[list] = []

    def batch_key(config):
        return ("batch", config.batch_size)

    def train_many(configs, data, *, on_epoch=None, on_done=None, share_epochs_to=None,
                   resume=True):
        calls.append(list(configs))
        results = []
        for index, config in enumerate(configs):
            def member(epoch, metrics, index=index):
                on_epoch(index, epoch, metrics)
            try:
                results.append(trainer.train(config, data, member,
                                             share_epochs_to=share_epochs_to))
            except Exception as error:
                results.append(error)
            if on_done is not None:  # final as soon as its training ends
                on_done(index, results[-1])
        return results

    monkeypatch.setattr(trainer, "batch_key", batch_key)
    monkeypatch.setattr(trainer, "train_many", train_many)
    return calls


def test_a_group_trains_in_one_pass_and_each_trial_is_recorded_on_its_own(project,
                                                                          monkeypatch):
    calls = _fake_group_training(monkeypatch)
    monkeypatch.setattr(study_setup, "make_pruner", lambda spec: _PruneOne())
    spec_path = write_spec(project, name="group", space={
        "learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32, 64], "epochs": [2],
        "head_width": [16, 32]})
    where = urls(project)
    summary = run_study(load_spec(spec_path), **where)

    # Two groups (one per batch size), each claimed and trained in one call.
    assert sorted(len(configs) for configs in calls) == [4, 4]
    for configs in calls:
        assert len({c.batch_size for c in configs}) == 1
        assert len({(c.learning_rate, c.head_width) for c in configs}) == 4
    assert len(summary.outcomes) == 8

    trials = optuna.load_study(study_name="group", storage=where["storage_url"]).get_trials()
    client = MlflowClient(where["tracking_uri"])
    run_ids = [t.user_attrs["mlflow_run_id"] for t in trials]
    assert len(set(run_ids)) == 8  # one run per trial
    for trial in trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["optuna.trial_number"] == str(trial.number)
        history = [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")]
        if (trial.params["learning_rate"], trial.params["head_width"]) == (1e-2, 32):
            # Pruned alone: its group's other members went on.
            assert trial.state == TrialState.PRUNED and list(trial.intermediate_values) == [1]
            assert run.info.status == "KILLED" and history == [1]
        else:
            assert trial.state == TrialState.COMPLETE
            assert list(trial.intermediate_values) == [1, 2] and history == [1, 2]
            assert run.info.status == "FINISHED"
            assert run.data.metrics["val_accuracy"] == pytest.approx(trial.value)


def test_an_interrupted_group_is_recorded_and_requeued_member_by_member(project, monkeypatch):
    """Ctrl-C stops the whole pass: every member is recorded as interrupted (its run KILLED),
    re-queued naming its trial, and the next run completes them, each naming the run it
    carries on."""
    calls = _fake_group_training(monkeypatch)
    fake = trainer.train_many

    def interrupted(configs, data, *, on_epoch=None, **options):
        def stop_after_first_report(index, epoch, metrics):
            on_epoch(index, epoch, metrics)
            raise KeyboardInterrupt

        return fake(configs, data, on_epoch=stop_after_first_report, **options)

    monkeypatch.setattr(trainer, "train_many", interrupted)
    spec_path = write_spec(project, name="ctrl-c")
    where = urls(project)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(spec_path), **where)
    assert [len(configs) for configs in calls] == [4]
    study = optuna.load_study(study_name="ctrl-c", storage=where["storage_url"])
    first = study.get_trials()
    failed = [t for t in first if t.state == TrialState.FAIL]
    assert len(failed) == 4 and {t.user_attrs["reason"] for t in failed} == {"interrupted"}
    client = MlflowClient(where["tracking_uri"])
    assert {client.get_run(t.user_attrs["mlflow_run_id"]).info.status for t in failed} == {
        "KILLED"}

    monkeypatch.setattr(trainer, "train_many", fake)
    run_study(load_spec(spec_path), **where)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 4 and len(calls) == 2 and len(calls[1]) == 4
    runs_of = {t.number: t.user_attrs["mlflow_run_id"] for t in failed}
    for trial in complete:
        previous = trial.user_attrs["failed_trial"]
        assert grid_queue.params_of(study.get_trials()[previous]) == trial.params
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        assert run.data.tags["resumed_from_run"] == runs_of[previous]
