"""Exactly-once writes on Optuna's RDB storage: each is one transaction, and each can tell on a
retry whether its own first attempt committed.

- `create_trial`: a new trial plus a system attr holding the caller's token (and a RUNNING
  trial's first heartbeat), in one transaction; `trial_by_token` finds it again (a retry whose
  first attempt committed unseen).
- `set_state`: a state change (a tell; a migrated WAITING trial's claim) plus the caller's
  token on the trial, in one transaction; a change to RUNNING records the trial's first
  heartbeat in it too.
- `set_intermediate_values`: several steps' values in one transaction.

The functions take Optuna's `RDBStorage` and never retry; `ResilientRDBStorage`
(search.storage.retry) retries them. Optuna's tables and its helpers for writing inside a
transaction are reached through search.storage.optuna_private only.
"""

from __future__ import annotations

import copy
import json
from datetime import datetime

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import select

from search.storage import optuna_private as private

CREATE_TOKEN_ATTR = "fer_search:create_token"  # system attr: who created the trial
STATE_TOKEN_ATTR = "fer_search:state_token"  # system attr: who made its last state change


def set_intermediate_values(storage: optuna.storages.RDBStorage, trial_id: int,
                            values: dict[int, float]) -> None:
    """`values` (step -> value) as the trial's intermediate values, in one transaction: Optuna
    writes each step in its own."""
    with private.session(storage, True) as session:
        for step, value in values.items():
            private.set_intermediate_value(storage, session, trial_id, step, value)


def create_trial(storage: optuna.storages.RDBStorage, study_id: int,
                 template: FrozenTrial | None, token: str) -> FrozenTrial:
    """`RDBStorage._create_new_trial` in one attempt, the trial marked with `token`; a RUNNING
    trial (asked, or a claimed grid point's) beats in the same transaction: a worker dying
    right after it leaves a trial that goes stale, never one RUNNING forever."""
    with private.session(storage) as session:
        private.lock_study(session, study_id)
        trial = _new_trial(storage, session, study_id, template, token)
        if trial.state == TrialState.RUNNING and storage.heartbeat_interval:
            private.beat(session, trial.trial_id)
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
