"""Batched asks (issue 20): a random or TPE worker asks k trials at once and trains those of one
group in one pass; the draws and values are those of one-at-a-time asks, `n_trials` holds
exactly across racing workers, and trials a worker cannot run go back to the queue."""

from __future__ import annotations

import time

import optuna
import pytest
from optuna.trial import TrialState

import trainer
from search import settings
from search.spec.loader import load_spec
from search.storage.sessions import open_storage
from search.study import ask_batch, grid_queue, recovery
from search.study.loop import run_study
from search.study.setup import make_sampler
from tests.search.studyhelp import race, urls, write_spec

# A tiny space: two class weightings make two groups; everything else is free inside a group
# (heads of the two batch sizes train in passes side by side).
SPACE = {
    "learning_rate": {"low": 1.0e-3, "high": 3.0e-2, "log": True},
    "batch_size": {"choices": [16, 32]},
    "class_weight": {"choices": ["none", "balanced"]},
    "epochs": {"low": 1, "high": 2},
    "head_width": {"choices": [8, 16]},
    "dropout": {"low": 0.0, "high": 0.5},
}
TRAIN = {"image_size": 32, "weights": "none", "seed": 0}


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    from trainer.runtime import load_tensorflow

    load_tensorflow()
    return tmp_path


def _run(folder, monkeypatch, batch: int | None, real, sampler: str = "random",
         *, n_trials: int) -> tuple[list, list[list]]:
    """A study in its own project folder (own caches: no epoch record of the other run can
    answer a trial); its trials and the batches `train_many` (`real`) trained."""
    folder.mkdir()
    monkeypatch.chdir(folder)
    passes: list[list] = []

    def spy(configs, *args, **kwargs):
        passes.append(list(configs))
        return real(configs, *args, **kwargs)

    monkeypatch.setattr(trainer, "train_many", spy)
    spec_path = write_spec(folder, sampler=sampler, n_trials=n_trials, seed=7, space=SPACE,
                           train=TRAIN)
    with settings.override(FER_SEARCH_ASK_BATCH=batch):
        summary = run_study(load_spec(spec_path), **urls(folder))
    assert len(summary.outcomes) == n_trials
    trials = optuna.load_study(study_name="tiny", storage=urls(folder)["storage_url"]).get_trials()
    return trials, passes


def test_batched_asks_draw_and_score_what_one_at_a_time_asks_do(project, monkeypatch):
    real = trainer.train_many
    # 16 trials: two batches of 8 (benchmarks/random_batched.py asks 32, as the issue did).
    alone, alone_passes = _run(project / "one", monkeypatch, 1, real, n_trials=16)
    batched, passes = _run(project / "batched", monkeypatch, 8, real, n_trials=16)
    assert alone_passes == []  # one at a time: every trial trained alone
    assert [t.params for t in batched] == [t.params for t in alone]
    assert all(t.state == TrialState.COMPLETE for t in batched + alone)
    # Each trial's value exactly: a head computes the same numbers in a group as alone.
    assert [t.value for t in batched] == [t.value for t in alone]
    # And trials did share passes, with heads of different dropout rates among them.
    assert len(passes) >= 2 and max(len(configs) for configs in passes) >= 2
    assert any(len({c.dropout for c in configs}) > 1 for configs in passes)
    assert any(len({c.batch_size for c in configs}) > 1 for configs in passes)
    for configs in passes:
        assert len({c.class_weight for c in configs}) == 1


def test_tpe_batches_its_random_startup_and_then_draws_what_one_at_a_time_draws(
        project, monkeypatch):
    """TPE unset: its 10 random start-up trials asked in batches (8, then 2) and trained
    together, then one at a time. The same configurations and values as one-at-a-time asks,
    the model-drawn trials after the start-up included: TPE's first model sees the same
    finished trials either way."""
    real = trainer.train_many
    alone, alone_passes = _run(project / "one", monkeypatch, 1, real, "tpe", n_trials=13)
    batched, passes = _run(project / "batched", monkeypatch, None, real, "tpe", n_trials=13)
    assert alone_passes == []
    assert [t.params for t in batched] == [t.params for t in alone]
    assert [t.value for t in batched] == [t.value for t in alone]
    assert all(t.state == TrialState.COMPLETE for t in batched + alone)
    # Only start-up trials shared passes (trial numbers are not on a TrainConfig: match the
    # learning rates, each drawn from a continuous range).
    startup_rates = {t.params["learning_rate"] for t in batched[:ask_batch.TPE_STARTUP_TRIALS]}
    assert passes and max(len(configs) for configs in passes) >= 2
    assert all(c.learning_rate in startup_rates for configs in passes for c in configs)


# --------------------------------------------------------------------------- the budget


def _spec(folder, **changes):
    return load_spec(write_spec(folder, sampler="random", space=SPACE, train=TRAIN, **changes))


def _ask_until_done(url: str, folder: str, results) -> None:
    """A racing worker: asks batches of 3 and finishes each trial at once, until the study's
    budget is spent (module level: picklable)."""
    from pathlib import Path

    spec = _spec(Path(folder), n_trials=10)
    storage = open_storage(url)
    study = optuna.load_study(study_name=spec.name, storage=storage, sampler=make_sampler(spec))
    numbers = []
    with settings.override(FER_SEARCH_ASK_BATCH=3):
        while batch := ask_batch.ask(study, storage, spec, None):
            for trial in batch:
                numbers.append(trial.number)
                study.tell(trial, 0.5)
    results.put(numbers)


def test_racing_workers_ask_exactly_n_trials(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    spec = _spec(tmp_path, n_trials=10)
    with open_storage(url) as storage:
        optuna.create_study(study_name=spec.name, storage=storage)
    answers = race(_ask_until_done, (url, str(tmp_path)), 3, 180)
    numbers = sorted(n for answer in answers for n in answer)
    assert numbers == list(range(10))
    with open_storage(url, read_only=True) as storage:
        study = optuna.load_study(study_name=spec.name, storage=storage)
        assert grid_queue.count(study, TrialState.COMPLETE) == 10
        assert len(study.get_trials()) == 10


def test_a_batch_stops_at_the_budget_and_at_the_call_s_limit(tmp_path):
    spec = _spec(tmp_path, n_trials=5)
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage)
        with settings.override(FER_SEARCH_ASK_BATCH=4):
            assert len(ask_batch.ask(study, storage, spec, 2)) == 2  # --n-trials' remainder
            assert len(ask_batch.ask(study, storage, spec, None)) == 3  # 5 - 2 running
            assert ask_batch.ask(study, storage, spec, None) == []


# ------------------------------------------------------------------- groups of a batch


def test_a_batch_splits_by_batch_key_up_to_the_cost_cap(tmp_path):
    spec = _spec(tmp_path, n_trials=12)
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec))
        with settings.override(FER_SEARCH_ASK_BATCH=12, FER_SEARCH_MAX_GROUP=3):
            batch = ask_batch.ask(study, storage, spec, None)
            groups = ask_batch.split(spec, batch, storage)
    assert sorted(t.number for g in groups for t in g) == list(range(12))
    for group in groups:
        assert len({t.params["class_weight"] for t in group}) == 1
        assert len(group) <= 3  # every trial here is its own head (float learning rates)
    assert [g[0].number for g in groups] == sorted(g[0].number for g in groups)


# ------------------------------------------------------------- exactly once: back to the queue


def test_unstarted_trials_handed_back_are_requeued_and_asked_again_first(tmp_path):
    spec = _spec(tmp_path, n_trials=6)
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec))
        with settings.override(FER_SEARCH_ASK_BATCH=4):
            batch = ask_batch.ask(study, storage, spec, None)
            assert ask_batch.hand_back(study, storage, batch[2:]) == 2
            again = ask_batch.ask(study, storage, spec, None)
        trials = study.get_trials()
    handed = {t.number: t for t in trials if t.state == TrialState.FAIL}
    assert sorted(handed) == [2, 3]
    assert {t.user_attrs["reason"] for t in handed.values()} == {ask_batch.HANDED_BACK}
    # The copies come first, with the params drawn for them; then 6 - 4 running = 2 new ones.
    assert [t.params for t in again[:2]] == [handed[2].params, handed[3].params]
    assert len(again) == 4 and "reason" not in trials[again[0].number].user_attrs
    assert sum(t.state == TrialState.RUNNING for t in trials) == 6


def test_a_dead_worker_s_unstarted_batch_is_recovered_by_the_one_recovery_path(tmp_path):
    """Asked trials whose worker died are found by their stopped heartbeat and copied into
    Optuna's queue by the recovery that grid studies share (search.study.recovery): the next
    ask takes the copies, with their params, before drawing anything new."""
    spec = _spec(tmp_path, n_trials=3)
    with settings.override(FER_SEARCH_HEARTBEAT_S=1, FER_SEARCH_GRACE_S=1):
        storage = open_storage(f"sqlite:///{tmp_path}/optuna.db", resilient=True)
    with storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec))
        with settings.override(FER_SEARCH_ASK_BATCH=3):
            batch = ask_batch.ask(study, storage, spec, None)  # then the worker dies: no beats
            time.sleep(2.2)  # past the grace
            lost = recovery.recover_lost(study, storage)
            assert sorted(t.number for t in lost) == [0, 1, 2]
            again = ask_batch.ask(study, storage, spec, None)
    assert [t.params for t in again] == [t.params for t in batch]
    assert [t.number for t in again] == [3, 4, 5]


def test_a_worker_stopped_mid_batch_hands_the_rest_back_and_the_next_run_completes_it(
        project, monkeypatch):
    """SIGTERM during a batch's first group: that group finishes, the batch's other groups go
    back to the queue at once (not after a heartbeat's grace), and the next run runs them
    with their params: n_trials complete, each configuration once."""
    import signal

    real_train, real_many = trainer.train, trainer.train_many
    calls = []

    def signalled(real):
        def train(*args, **kwargs):
            calls.append(1)
            if len(calls) == 1:
                signal.raise_signal(signal.SIGTERM)  # as a supervisor scaling down would
            return real(*args, **kwargs)
        return train

    monkeypatch.setattr(trainer, "train", signalled(real_train))
    monkeypatch.setattr(trainer, "train_many", signalled(real_many))
    spec_path = write_spec(project, sampler="random", n_trials=6, seed=3, train=TRAIN,
                           space={**SPACE, "epochs": [1]})
    where = urls(project)
    with settings.override(FER_SEARCH_ASK_BATCH=6):
        first = run_study(load_spec(spec_path), **where)
        assert first.stopped_because == "stopped by SIGTERM"
        study = optuna.load_study(study_name="tiny", storage=where["storage_url"])
        trials = study.get_trials()
        done = [t for t in trials if t.state == TrialState.COMPLETE]
        handed = [t for t in trials if t.state == TrialState.FAIL]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        assert len(done) == len(first.outcomes) and 1 <= len(done) < 6
        assert len(handed) == len(waiting) == 6 - len(done)
        assert {t.user_attrs["reason"] for t in handed} == {ask_batch.HANDED_BACK}
        run_study(load_spec(spec_path), **where)
    trials = study.get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 6 and len(trials) == 6 + len(handed)
    drawn = [t.params for t in done + handed]
    assert sorted(map(repr, (t.params for t in complete))) == sorted(map(repr, drawn))


def test_tpe_asks_batches_past_its_startup_within_the_budget(tmp_path):
    """TPE (constant liar) draws whole batches while earlier ones of the batch are pending:
    every param within its range, and exactly n_trials."""
    spec = load_spec(write_spec(tmp_path, sampler="tpe", n_trials=28, space=SPACE, train=TRAIN))
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec), direction="maximize")
        sizes = []
        with settings.override(FER_SEARCH_ASK_BATCH=8):
            while batch := ask_batch.ask(study, storage, spec, None):
                sizes.append(len(batch))
                for trial in batch:  # a smooth score, best near learning_rate 1e-2
                    study.tell(trial, -abs(trial.params["learning_rate"] - 1e-2))
        trials = study.get_trials()
    # No batch spans the end of TPE's 10 random start-up trials.
    assert sizes == [8, 2, 8, 8, 2] and len(trials) == 28
    assert all(1e-3 <= t.params["learning_rate"] <= 3e-2 for t in trials)
    assert all(t.params["batch_size"] in (16, 32) for t in trials)


def test_a_failed_tpe_startup_trial_is_replaced_by_another_random_one(tmp_path):
    """TPE draws at random until 10 trials have finished, failed ones not counted: a batch after
    failures still takes only random draws, as many as the start-up lacks."""
    spec = load_spec(write_spec(tmp_path, sampler="tpe", n_trials=40, space=SPACE, train=TRAIN))
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec), direction="maximize")
        with settings.override(FER_SEARCH_ASK_BATCH=None):
            first = ask_batch.ask(study, storage, spec, None)
            for trial in first[:6]:
                study.tell(trial, 0.5)
            for trial in first[6:]:
                study.tell(trial, state=TrialState.FAIL)
            second = ask_batch.ask(study, storage, spec, None)
            for trial in second:
                study.tell(trial, 0.5)
            third = ask_batch.ask(study, storage, spec, None)
    assert [len(first), len(second), len(third)] == [8, 4, 1]
    # The first two batches were drawn at random, the third by TPE's model, which marks its
    # (relative) draws in the trial's system attributes.
    def model_drawn(trial) -> bool:
        attrs = study.trials[trial.number].system_attrs
        return any(key.startswith("tpe:relative_params") for key in attrs)

    assert [model_drawn(t) for t in first + second + third] == [False] * 12 + [True]


@pytest.mark.parametrize(("sampler", "expected"), [("random", [8, 8, 8, 3, 3]),
                                                  ("tpe", [8, 2, 1, 3, 3])])
def test_an_unset_batch_is_the_samplers_default(tmp_path, sampler, expected):
    """Unset FER_SEARCH_ASK_BATCH: random asks 8 at once (same draws, fewer passes); TPE 8 of
    its random start-up, the rest of it, then one (its constant liar learned less in batches:
    benchmarks/results/tpe_batched-by-8.md); set, it rules."""
    spec = load_spec(write_spec(tmp_path, sampler=sampler, n_trials=40, space=SPACE, train=TRAIN))
    with open_storage(f"sqlite:///{tmp_path}/optuna.db") as storage:
        study = optuna.create_study(study_name=spec.name, storage=storage,
                                    sampler=make_sampler(spec), direction="maximize")
        sizes = []
        for batch in (None, None, None, 3, 3):
            with settings.override(FER_SEARCH_ASK_BATCH=batch):
                asked = ask_batch.ask(study, storage, spec, None)
            sizes.append(len(asked))
            for trial in asked:
                study.tell(trial, 0.5)
    assert sizes == expected
