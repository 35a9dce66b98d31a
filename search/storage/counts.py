"""Counts of a study's trials that cost one indexed query, where Optuna's `get_trials` would
read (and build) every unfinished trial, in every worker polling for a study's end; and the
index on Optuna's `trials` those counts read through (`TRIALS_INDEX`, created with the store).

Never retries; `ResilientRDBStorage.count_trials` and `count_failed_for_good`
(search.storage.retry) do.
"""

from __future__ import annotations

import json

import optuna
from optuna.trial import TrialState
from sqlalchemy import func, select, text

from search.contracts import PERMANENT_FAILURE, TRIAL_FAILURE_ATTR
from search.queue import items, schema
from search.storage import optuna_private as private

TRIALS_INDEX = "fer_search_trials_queue"  # on Optuna's `trials`: (study_id, state, trial_id)


def ensure_index(engine) -> None:
    """Creates `TRIALS_INDEX` if missing (callers serialise it: `open_storage`'s table lock)."""
    with engine.begin() as connection:
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS {TRIALS_INDEX} "
                                f"ON trials (study_id, state, trial_id)"))


def queued_points(storage: optuna.storages.RDBStorage, study_id: int) -> int:
    """How many grid points of the study wait in the queue (search.queue), claimed ones not
    counted; 0 in a store whose queue tables are older (a read-only command does not migrate)."""
    if schema.version(storage.engine) != schema.VERSION:
        return 0
    return items.counts(storage.engine, study_id).get("queued", 0)


def queued_in(study: optuna.Study) -> int:
    """`queued_points` of a study (0 for a storage that is not a database)."""
    storage = private.storage_of(study)
    if not hasattr(storage, "engine"):
        return 0
    return queued_points(storage, storage.get_study_id_from_name(study.study_name))


def count(storage: optuna.storages.RDBStorage, study_id: int, states) -> int:
    """How many trials of the study are in `states`: one COUNT, where Optuna's `get_trials`
    would read (and build) every unfinished trial, in every worker polling for the end."""
    trials = private.TRIALS
    with private.session(storage) as session:
        return int(session.execute(
            select(func.count()).select_from(trials)
            .where(trials.study_id == study_id, trials.state.in_(list(states)))).scalar())


def count_failed_for_good(storage: optuna.storages.RDBStorage, study_id: int) -> int:
    """How many trials of the study are FAIL with the permanent mark (user attr `failure`:
    never re-queued: they failed on their own merits or were given up), in one COUNT."""
    trials, attrs = private.TRIALS, private.USER_ATTRS
    with private.session(storage) as session:
        return int(session.execute(
            select(func.count()).select_from(trials)
            .join(attrs, attrs.trial_id == trials.trial_id)
            .where(trials.study_id == study_id, trials.state == TrialState.FAIL,
                   attrs.key == TRIAL_FAILURE_ATTR,
                   attrs.value_json == json.dumps(PERMANENT_FAILURE))).scalar())
