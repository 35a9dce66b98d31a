"""Claims that scale (issue 18): WAITING trials taken WAITING -> RUNNING in one short
transaction whose cost does not grow with the queue, and that never waits behind another
worker's claim.

- The transaction reads at most `window` WAITING trials of the study, in queue order, through
  the index `TRIALS_INDEX` (study_id, state, trial_id): a claim reads as many rows with 10 or
  10,000 trials waiting.
- On PostgreSQL the read is `SELECT ... FOR UPDATE SKIP LOCKED`: rows another worker's claim is
  looking at are skipped, not waited for, so workers claiming at once take different trials
  instead of queueing behind the head of the list. A row is re-checked WAITING after it is
  locked (PostgreSQL re-evaluates the WHERE on the newest version), so a trial claimed and
  committed meanwhile is never taken twice. On SQLite every transaction begins with `BEGIN
  IMMEDIATE` (search.storage.engines): claims are serialised, which is atomic and, at SQLite's
  scale, cheap.
- The caller's `choose` picks which of the rows to take (a grid group's members); they are set
  RUNNING with the caller's token and a first heartbeat, in the same transaction. A retry whose
  first attempt committed unseen finds its trials by the token (`claimed_by`), so a claim whose
  answer was lost is still its worker's, never a RUNNING trial with nobody on it.

Never retries; `ResilientRDBStorage.claim_waiting` (search.storage.retry) does.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, NamedTuple

import optuna
from optuna.trial import TrialState
from sqlalchemy import func, select, text

from search.contracts import PERMANENT_FAILURE, TRIAL_FAILURE_ATTR
from search.storage import optuna_private as private
from search.storage import points

TRIALS_INDEX = "fer_search_trials_queue"  # on Optuna's `trials`: a claim's read
WINDOW = 32  # rows a claim looks at (and locks for a moment): a group's members and a few more


class Waiting(NamedTuple):
    """A WAITING trial as a claim sees it: its id, number and queued grid point (None: a trial
    that was not queued for a grid point, e.g. a random study's re-queued copy), and whether it
    must train alone (`points.ALONE_ATTR`: it died with its worker while sharing a pass)."""

    trial_id: int
    number: int
    params: dict[str, Any] | None
    alone: bool = False


Choose = Callable[[Sequence[Waiting]], Sequence[int]]


def ensure_index(engine) -> None:
    """Creates `TRIALS_INDEX` if missing (callers serialise it: `open_storage`'s table lock)."""
    with engine.begin() as connection:
        connection.execute(text(f"CREATE INDEX IF NOT EXISTS {TRIALS_INDEX} "
                                f"ON trials (study_id, state, trial_id)"))


def claim_waiting(storage: optuna.storages.RDBStorage, study_id: int, choose: Choose,
                  token: str, window: int = WINDOW) -> list[int]:
    """Claims the WAITING trials `choose` picks among the first `window` this transaction can
    lock; returns their ids ([] when it locked none, or chose none)."""
    trials = private.TRIALS
    with private.session(storage) as session:
        rows = session.execute(
            select(trials.trial_id, trials.number)
            .where(trials.study_id == study_id, trials.state == TrialState.WAITING)
            .order_by(trials.trial_id).limit(window)
            .with_for_update(skip_locked=True)).all()
        if not rows:
            return []
        queued, alone = _queued_points(session, [trial_id for trial_id, _ in rows])
        candidates = [Waiting(trial_id, number, queued.get(trial_id), trial_id in alone)
                      for trial_id, number in rows]
        chosen = [trial_id for trial_id in choose(candidates)
                  if trial_id in {c.trial_id for c in candidates}]
        now = datetime.now()
        for trial in session.query(trials).filter(trials.trial_id.in_(chosen)).all():
            if trial.state != TrialState.WAITING:  # cannot happen under the row's lock
                raise RuntimeError(f"trial {trial.trial_id} left WAITING while locked")
            private.set_trial_attr(storage, session, trial.trial_id, points.STATE_TOKEN_ATTR,
                                   token)
            trial.state = TrialState.RUNNING
            trial.datetime_start = now
            if storage.heartbeat_interval:
                private.beat(session, trial.trial_id)
    return chosen


def claimed_by(storage: optuna.storages.RDBStorage, study_id: int, token: str) -> list[int]:
    """The trials a claim with `token` took, if it committed (in queue order)."""
    attrs, trials = private.SYSTEM_ATTRS, private.TRIALS
    with private.session(storage) as session:
        return list(session.execute(
            select(attrs.trial_id)
            .join(trials, trials.trial_id == attrs.trial_id)
            .where(trials.study_id == study_id, trials.state != TrialState.WAITING,
                   attrs.key == points.STATE_TOKEN_ATTR, attrs.value_json == json.dumps(token))
            .order_by(attrs.trial_id)).scalars())


def any_waiting(storage: optuna.storages.RDBStorage, study_id: int) -> bool:
    """Whether the study has a WAITING trial (locked by a claim or not): one indexed row."""
    trials = private.TRIALS
    with private.session(storage) as session:
        return session.execute(
            select(trials.trial_id)
            .where(trials.study_id == study_id, trials.state == TrialState.WAITING)
            .limit(1)).first() is not None


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


def _queued_points(session, trial_ids: list[int]) -> tuple[dict[int, dict[str, Any]], set[int]]:
    """The grid point each trial was queued for (`points.POINT_ATTR`, else Optuna's
    `fixed_params` of a study queued before the point table), and the trials marked to train
    alone (`points.ALONE_ATTR`), in one read."""
    attrs = private.SYSTEM_ATTRS
    found: dict[int, dict[str, Any]] = {}
    alone: set[int] = set()
    for trial_id, key, value in session.execute(
            select(attrs.trial_id, attrs.key, attrs.value_json)
            .where(attrs.trial_id.in_(trial_ids),
                   attrs.key.in_((points.POINT_ATTR, "fixed_params", points.ALONE_ATTR)))
            .order_by(attrs.key.desc())):  # "fixed_params" before "fer_search:...": the point wins
        value = json.loads(value)
        if key == points.ALONE_ATTR:
            if value:
                alone.add(trial_id)
        else:
            found[trial_id] = json.loads(value) if key == points.POINT_ATTR else value
    return found, alone
