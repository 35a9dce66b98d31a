"""The queue schema's own migration (search.queue.schema): a store of the old layout (a grid's
points as WAITING trials in Optuna's tables, `fer_search_grid_points` saying who held each) is
moved into the queue's table once, when a worker opens it, and its study carries on there."""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState
from sqlalchemy import inspect, text

from search.contracts import PERMANENT_FAILURE, TRIAL_FAILURE_ATTR
from search.queue import items, schema
from search.spec.loader import load_spec
from search.storage.locks import study_lock
from search.storage.sessions import open_storage
from search.study import grid_queue
from tests.search.studyhelp import write_spec


def _old_store(url: str, spec) -> list[dict]:
    """A version-0 store: the spec's 4 points as trials holding their rows of the old point
    table: one COMPLETE, one FAIL for good, one interrupted (FAIL), one WAITING."""
    storage = optuna.storages.RDBStorage(url)
    study = optuna.create_study(study_name=spec.name, storage=storage)
    study_id = storage.get_study_id_from_name(spec.name)
    points = grid_queue.grid_points(spec)
    ids = []
    for params, state in zip(points, ("COMPLETE", "GIVEN_UP", "FAIL", "WAITING"), strict=True):
        system = {"fixed_params": params, schema.OLD_POINT_ATTR: grid_queue.canonical(params)}
        user = {TRIAL_FAILURE_ATTR: PERMANENT_FAILURE} if state == "GIVEN_UP" else {}
        trial = optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs=system, user_attrs=user)
        trial_id = storage.create_new_trial(study_id, trial)
        if state == "COMPLETE":
            storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [0.5])
        elif state in ("GIVEN_UP", "FAIL"):
            storage.set_trial_state_values(trial_id, TrialState.RUNNING)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
        ids.append(trial_id)
    with storage.engine.begin() as connection:
        connection.execute(text(f"CREATE TABLE {schema.OLD_POINT_TABLE} (study_id INTEGER, "
                                f"point_key VARCHAR(64), trial_id INTEGER, "
                                f"PRIMARY KEY (study_id, point_key))"))
        for params, trial_id in zip(points, ids, strict=True):
            connection.execute(text(f"INSERT INTO {schema.OLD_POINT_TABLE} VALUES "
                                    f"(:s, :k, :t)"), {"s": study_id,
                                                       "k": grid_queue.point_key(params),
                                                       "t": trial_id})
    storage.engine.dispose()
    del study
    return points


def test_an_old_store_is_moved_into_the_queue_once_and_its_study_carries_on(tmp_path):
    url = f"sqlite:///{tmp_path}/optuna.db"
    spec = load_spec(write_spec(tmp_path, name="old"))
    points = _old_store(url, spec)
    storage = open_storage(url, resilient=True)  # a worker of this version opens it
    try:
        assert schema.version(storage.engine) == schema.VERSION
        assert not inspect(storage.engine).has_table(schema.OLD_POINT_TABLE)
        study = optuna.load_study(study_name="old", storage=storage)
        study_id = grid_queue.study_id_of(study, storage)
        assert items.counts(storage.engine, study_id) == {"done": 2, "failed": 1, "queued": 1}
        schema.upgrade(storage)  # a second upgrade (another worker) changes nothing
        assert items.counts(storage.engine, study_id) == {"done": 2, "failed": 1, "queued": 1}

        # The study carries on: the interrupted point is re-queued by the fill, and a claim
        # starts the WAITING trial the old layout made rather than a second one.
        with study_lock(url, "old"):
            assert grid_queue.fill_queue(study, spec) == 1
        claimed = []
        while trial := grid_queue.claim_next(study, storage):
            claimed.append(trial)
        trials = study.get_trials(deepcopy=False)
        assert len(trials) == 5  # the old four, and one new for the interrupted point's retry
        started = [t for t in trials if t.state == TrialState.RUNNING]
        assert sorted(t.number for t in started) == sorted(t.number for t in claimed)
        assert 3 in {t.number for t in started}  # the old WAITING trial, started
        retry = next(t for t in started if t.number == 4)
        assert json.loads(retry.system_attrs[grid_queue.POINT_ATTR]) == points[2]
        assert retry.system_attrs["failed_trial"] == 2
    finally:
        storage.close()


def test_a_new_store_is_at_the_current_version_with_an_empty_queue(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path}/optuna.db")
    try:
        assert schema.version(storage.engine) == schema.VERSION
        assert items.counts(storage.engine, 1) == {}
    finally:
        storage.close()
