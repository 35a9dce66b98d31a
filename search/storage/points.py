"""Exactly-once writes on Optuna's RDB storage: each is one transaction, and each can tell on a
retry whether its own first attempt committed.

- `create_trial`: a new trial plus a system attr holding the caller's token, in one
  transaction; `trial_by_token` finds it again (a retry whose first attempt committed unseen).
- `set_state`: a state change (a claim WAITING -> RUNNING, a tell) plus the caller's token on
  the trial, in one transaction; a claim records the trial's first heartbeat in it too.
- `enqueue_point`: a grid point's WAITING trial plus its row in `GRID_POINTS`, in one
  transaction. The table's primary key (study_id, point_key) admits one live trial per grid
  point: a second enqueue of the point (a retry, a racing worker) fails on the key and creates
  nothing.
- `replace_trial`: the one re-queue: fails a stale RUNNING trial (or takes a FAILed one) and
  creates its WAITING copy, moving the point's row from the old trial to the copy, in one
  transaction. "The old trial is FAIL" therefore means "its copy exists" whoever failed it.

The functions take Optuna's `RDBStorage` and never retry; `ResilientRDBStorage`
(search.storage.retry) retries them. Optuna's tables and its helpers for writing inside a
transaction are reached through search.storage.optuna_private only.
"""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import datetime
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    case,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy import exc as sa_exc

from search.contracts import PERMANENT_FAILURE, TRIAL_FAILURE_ATTR, TRIAL_REASON_ATTR
from search.storage import optuna_private as private

CREATE_TOKEN_ATTR = "fer_search:create_token"  # system attr: who created the trial
STATE_TOKEN_ATTR = "fer_search:state_token"  # system attr: who made its last state change
REQUEUE_TOKEN_ATTR = "fer_search:requeue_token"  # system attr: who re-queued a FAIL trial
POINT_ATTR = "fer_search:grid_point"  # system attr: the grid point's canonical JSON
# System attr of a re-queued copy whose trial died with its worker while sharing a pass: the
# copy trains alone (claims, ask_batch.split), so a trial that kills its worker is found and
# uses up its own retries only.
ALONE_ATTR = "fer_search:alone"

_metadata = MetaData()
# One row per live grid point: the trial that holds it (WAITING, RUNNING, done, or the FAIL
# trial a re-queue will replace). The primary key is the backstop of exactly-once.
GRID_POINTS = Table(
    "fer_search_grid_points", _metadata,
    Column("study_id", Integer, primary_key=True, autoincrement=False),
    Column("point_key", String(64), primary_key=True),
    Column("trial_id", Integer, nullable=False),
)


def canonical(params: dict[str, Any]) -> str:
    """A grid point's identity: its params as JSON with sorted names."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def point_key(params: dict[str, Any]) -> str:
    """The point's key in `GRID_POINTS` (a fixed-length digest of `canonical`)."""
    return hashlib.sha256(canonical(params).encode()).hexdigest()


def ensure_table(engine) -> None:
    """Creates `GRID_POINTS` if missing (callers serialise it: `open_storage`'s table lock)."""
    _metadata.create_all(engine, checkfirst=True)


def rows(storage: optuna.storages.RDBStorage, study_id: int) -> dict[str, int]:
    """The study's grid points and the trial holding each."""
    with private.session(storage) as session:
        found = session.execute(select(GRID_POINTS.c.point_key, GRID_POINTS.c.trial_id)
                                .where(GRID_POINTS.c.study_id == study_id)).all()
    return {key: trial_id for key, trial_id in found}


def set_intermediate_values(storage: optuna.storages.RDBStorage, trial_id: int,
                            values: dict[int, float]) -> None:
    """`values` (step -> value) as the trial's intermediate values, in one transaction: Optuna
    writes each step in its own."""
    with private.session(storage, True) as session:
        for step, value in values.items():
            private.set_intermediate_value(storage, session, trial_id, step, value)


def held_and_failed(storage: optuna.storages.RDBStorage, study_id: int) -> tuple[int, int]:
    """How many grid points of the study are held by a trial of the study, and how many of
    those by a FAIL trial (interrupted or failed for good): a worker's start-up check, in one
    query, that the queue needs no filling (rows left by a deleted study are not counted)."""
    trials = private.TRIALS
    with private.session(storage) as session:
        held, failed = session.execute(
            select(func.count(), func.count(case((trials.state == TrialState.FAIL, 1))))
            .select_from(GRID_POINTS)
            .join(trials, (trials.trial_id == GRID_POINTS.c.trial_id)
                  & (trials.study_id == study_id))
            .where(GRID_POINTS.c.study_id == study_id)).one()
    return int(held), int(failed)


def drop_leftovers(storage: optuna.storages.RDBStorage, study_id: int) -> None:
    """Deletes rows naming no trial of the study (a deleted study whose id SQLite reused)."""
    with private.session(storage) as session:
        session.execute(delete(GRID_POINTS).where(
            GRID_POINTS.c.study_id == study_id,
            GRID_POINTS.c.trial_id.not_in(select(private.TRIALS.trial_id).where(
                private.TRIALS.study_id == study_id))))


def create_trial(storage: optuna.storages.RDBStorage, study_id: int,
                 template: FrozenTrial | None, token: str) -> FrozenTrial:
    """`RDBStorage._create_new_trial` in one attempt, the trial marked with `token`."""
    with private.session(storage) as session:
        private.lock_study(session, study_id)
        trial = _new_trial(storage, session, study_id, template, token)
        return _frozen(trial, template)


def trial_by_token(storage: optuna.storages.RDBStorage, study_id: int,
                   token: str) -> FrozenTrial | None:
    """The trial of `study_id` created with `token`, if its creation committed."""
    with private.session(storage) as session:
        trial_id = session.execute(
            select(private.SYSTEM_ATTRS.trial_id)
            .join(private.TRIALS,
                  private.TRIALS.trial_id == private.SYSTEM_ATTRS.trial_id)
            .where(private.TRIALS.study_id == study_id,
                   private.SYSTEM_ATTRS.key == CREATE_TOKEN_ATTR,
                   private.SYSTEM_ATTRS.value_json == json.dumps(token))
        ).scalar()
    if trial_id is None:
        return None
    return optuna.storages.RDBStorage.get_trial(storage, trial_id)


def state_token(storage: optuna.storages.RDBStorage, trial_id: int) -> str | None:
    """The token of the trial's last state change."""
    with private.session(storage) as session:
        found = session.execute(
            select(private.SYSTEM_ATTRS.value_json)
            .where(private.SYSTEM_ATTRS.trial_id == trial_id,
                   private.SYSTEM_ATTRS.key == STATE_TOKEN_ATTR)).scalar()
    return None if found is None else json.loads(found)


def set_state(storage: optuna.storages.RDBStorage, trial_id: int, state: TrialState,
              values, token: str) -> bool:
    """`RDBStorage.set_trial_state_values` with `token` on the trial in the same transaction,
    and a claim's first heartbeat in it too (a worker dying right after its claim still leaves
    a trial that goes stale). False: a claim of a trial that is not WAITING.

    Raises:
        UpdateFinishedTrialError: the trial is finished.
    """
    with private.session(storage) as session:
        trial = private.lock_trial(session, trial_id)
        storage.check_trial_is_updatable(trial_id, trial.state)
        if state == TrialState.RUNNING and trial.state != TrialState.WAITING:
            return False
        private.set_trial_attr(storage, session, trial_id, STATE_TOKEN_ATTR, token)
        if values is not None:
            for objective, value in enumerate(values):
                private.set_trial_value(storage, session, trial, objective, value)
        trial.state = state
        if state == TrialState.RUNNING:
            trial.datetime_start = datetime.now()
            if storage.heartbeat_interval:
                private.beat(session, trial_id)
        if state.is_finished():
            trial.datetime_complete = datetime.now()
    return True


def enqueue_point(storage: optuna.storages.RDBStorage, study_id: int, template: FrozenTrial,
                  key: str, token: str) -> FrozenTrial | None:
    """Creates the WAITING trial of grid point `key` and its row; None when the point is held
    already (by a trial of this study), which a retry of a committed enqueue finds too."""
    try:
        with private.session(storage) as session:
            private.lock_study(session, study_id)
            trial = _new_trial(storage, session, study_id, template, token)
            session.execute(insert(GRID_POINTS).values(study_id=study_id, point_key=key,
                                                       trial_id=trial.trial_id))
            return _frozen(trial, template)
    except sa_exc.IntegrityError:  # the point's row exists: held
        return None


def replace_trial(storage: optuna.storages.RDBStorage, study_id: int, old_id: int,
                  template: FrozenTrial | None, key: str | None, token: str, *,
                  stale_after_s: float | None, reason: str | None = None) -> str:
    """The one re-queue, in one transaction: fails the old trial if it is RUNNING with a
    heartbeat older than `stale_after_s` (None: it must be FAIL already, an interrupted trial),
    creates `template` (None: no copy, the trial has been retried enough) and moves point
    `key`'s row to it. A trial failed here gets `reason` (user attr `reason`) in the same
    transaction, and, given up (no template), the permanent mark: no later fill re-queues it.

    Returns:
        "replaced" (done now), "done" (done by this token's earlier attempt), or "skipped"
        (the trial is not, or no longer, to be replaced: alive, finished otherwise, or its
        point held by another trial).
    """
    with private.session(storage) as session:
        private.lock_study(session, study_id)
        old = private.lock_trial(session, old_id)
        marks = session.execute(
            select(private.SYSTEM_ATTRS.value_json)
            .where(private.SYSTEM_ATTRS.trial_id == old_id,
                   private.SYSTEM_ATTRS.key.in_(
                       (STATE_TOKEN_ATTR, REQUEUE_TOKEN_ATTR)))).scalars().all()
        if json.dumps(token) in marks:
            return "done"
        given_up = template is None
        if stale_after_s is not None:
            if old.state != TrialState.RUNNING or not _stale(session, old_id, stale_after_s):
                return "skipped"
        elif old.state != TrialState.FAIL:
            return "skipped"
        holder = None
        if key is not None:
            holder = session.execute(select(GRID_POINTS.c.trial_id).where(
                GRID_POINTS.c.study_id == study_id, GRID_POINTS.c.point_key == key)).scalar()
            if holder is not None and holder != old_id:
                template = None  # the point is another trial's: queue nothing
        if stale_after_s is None and template is None:
            return "skipped"
        if stale_after_s is not None:  # fail it, marked as ours
            private.set_trial_attr(storage, session, old_id, STATE_TOKEN_ATTR, token)
            if reason:
                private.set_trial_attr(storage, session, old_id, TRIAL_REASON_ATTR,
                                       reason[:1000], user=True)
            if given_up:
                private.set_trial_attr(storage, session, old_id, TRIAL_FAILURE_ATTR,
                                       PERMANENT_FAILURE, user=True)
            old.state = TrialState.FAIL
            old.datetime_complete = datetime.now()
        else:  # an interrupted trial, FAIL already: marked as re-queued by us
            _mark(session, old_id, token)
        if template is not None:
            trial = _new_trial(storage, session, study_id, template, token)
            if key is not None and holder is None:
                session.execute(insert(GRID_POINTS).values(study_id=study_id, point_key=key,
                                                           trial_id=trial.trial_id))
            elif key is not None:
                moved = session.execute(update(GRID_POINTS).where(
                    GRID_POINTS.c.study_id == study_id, GRID_POINTS.c.point_key == key,
                    GRID_POINTS.c.trial_id == old_id).values(trial_id=trial.trial_id))
                if moved.rowcount != 1:  # cannot happen under the study row's lock
                    raise RuntimeError(f"the grid point of trial {old_id} moved meanwhile")
    return "replaced"


def _mark(session, trial_id: int, token: str) -> None:
    """The re-queue's token on a FAIL trial (Optuna's helper refuses finished trials; the
    state token stays its worker's, whose retried tell looks for it)."""
    model = private.SYSTEM_ATTRS
    existing = session.query(model).filter(model.trial_id == trial_id,
                                           model.key == REQUEUE_TOKEN_ATTR).one_or_none()
    if existing is None:
        session.add(model(trial_id=trial_id, key=REQUEUE_TOKEN_ATTR,
                          value_json=json.dumps(token)))
    else:
        existing.value_json = json.dumps(token)


def _stale(session, trial_id: int, grace_s: float) -> bool:
    beat = private.last_heartbeat(session, trial_id)
    if beat is None:
        return False
    now = session.execute(func.now()).scalar().replace(tzinfo=None)
    return (now - beat).total_seconds() > grace_s


def _new_trial(storage, session, study_id: int, template: FrozenTrial | None, token: str):
    trial = private.new_trial(storage, session, study_id, template)
    session.flush()
    model = private.SYSTEM_ATTRS
    session.add(model(trial_id=trial.trial_id, key=CREATE_TOKEN_ATTR,
                      value_json=json.dumps(token)))
    return trial


def _frozen(trial, template: FrozenTrial | None) -> FrozenTrial:
    """What Optuna's `RDBStorage._create_new_trial` returns: `template` as the new trial (its
    number, start and id), else a bare RUNNING trial."""
    if template is not None:
        return FrozenTrial(
            number=trial.number, state=template.state, value=None, values=template.values,
            datetime_start=trial.datetime_start, datetime_complete=template.datetime_complete,
            params=copy.deepcopy(template.params),
            distributions=copy.deepcopy(template.distributions),
            user_attrs=copy.deepcopy(template.user_attrs),
            system_attrs=copy.deepcopy(template.system_attrs),
            intermediate_values=dict(template.intermediate_values), trial_id=trial.trial_id)
    return FrozenTrial(
        number=trial.number, state=trial.state, value=None, values=None,
        datetime_start=trial.datetime_start, datetime_complete=None, params={},
        distributions={}, user_attrs={}, system_attrs={}, intermediate_values={},
        trial_id=trial.trial_id,
    )
