"""Optuna's private names, every one the project relies on, in this one module (DESIGN: public
doors). No other module of `search` or `benchmarks` may use one
(tests/search/test_optuna_private.py scans them); the same test asserts that each name below
exists with the shape used here, so an Optuna release that drops or reshapes one fails there,
by name, and `scripts/test-newest-optuna.sh` runs it against the newest Optuna allowed.

Why they are needed at all, now that the grid queue, its claims and its re-queues live in the
queue's own tables (search.queue, issue 31) and reach Optuna through its public API:

- Idempotent retries: a new trial and a state change (a tell) each write a token in their own
  transaction, which a retry after a lost answer looks up (search.storage.idempotent); Optuna's
  public calls cannot add a row to their transaction.
- Counts that cost one indexed query (search.storage.counts), where the public `get_trials`
  reads every trial, in every worker polling for a study's end.
- A dead worker's trials: which RUNNING trials went stale (`stale_trial_ids`); the public route
  fails them itself, without the reason the project writes first.
- A claimed trial enters Optuna's cache around the storage without the cache re-reading every
  unfinished trial of the study (`remember_running`), and a trial's id (`trial_id`).

Everything else goes through public routes.

What is relied on (Optuna 5.0 and 5.1):

- `optuna.storages._rdb.storage._create_scoped_session`: a session that commits at the end and
  wraps database errors in `StorageInternalError` (`session`).
- `optuna.storages._rdb.models`: the ORM classes of Optuna's tables (`TRIALS`, `SYSTEM_ATTRS`,
  `USER_ATTRS` and the helpers below): their column attributes are Optuna's schema (the counts
  and the token look-ups read them).
- `RDBStorage`'s helpers for writing inside an open session: `_get_prepared_new_trial`,
  `_set_trial_attr_without_commit`, `_set_trial_value_without_commit`,
  `_set_trial_intermediate_value_without_commit`, and `_get_stale_trial_ids`.
- `RDBStorage`'s private methods that Optuna's cache calls directly (`CACHE_CALLS`), which a
  storage that retries its calls must retry too, and `_create_new_trial` (`CREATE_NEW_TRIAL`).
- `Study._storage` (the cache), `_CachedStorage._backend`, `_lock`, `_studies`,
  `_add_trials_to_cache`, `_StudyInfo.unfinished_trial_ids` (`remember_running`).
- `Trial._trial_id` and `FrozenTrial._trial_id` (`trial_id`).
- `optuna.importance`'s modules that import scikit-learn, and their `_imports` guard
  (`SKLEARN_IMPORTERS`, `defer_sklearn`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from datetime import datetime
from types import ModuleType
from typing import Any

import optuna
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import func
from sqlalchemy.orm import Session

# Optuna's tables, as its ORM classes: counts and idempotent query these columns (trial_id,
# study_id, number, state, datetime_start, datetime_complete; trial_id, key, value_json).
TRIALS = models.TrialModel
SYSTEM_ATTRS = models.TrialSystemAttributeModel
USER_ATTRS = models.TrialUserAttributeModel

# RDBStorage methods that Optuna's cache (`_CachedStorage`) calls directly, not through a
# public method: a storage whose calls retry must wrap them as well.
CACHE_CALLS = ("_set_trial_param", "_get_trials", "_get_best_trial_id", "_get_stale_trial_ids")
# The method both `RDBStorage.create_new_trial` and the cache's `create_new_trial` call to
# create a trial: the one place a storage can make trial creation idempotent.
CREATE_NEW_TRIAL = "_create_new_trial"
# optuna.importance's modules that import scikit-learn when imported (held in a `_imports`
# guard of Optuna's `try_import`), for the evaluators the study report never uses.
SKLEARN_IMPORTERS = ("optuna.importance._fanova._fanova",
                     "optuna.importance._mean_decrease_impurity")


def session(storage: optuna.storages.RDBStorage,
            ignore_integrity_error: bool = False) -> AbstractContextManager[Session]:
    """One transaction on `storage`'s session factory, committed on leaving, rolled back on an
    error (an `IntegrityError` is re-raised unless ignored; another database error becomes
    Optuna's `StorageInternalError`, its cause kept for search.storage.retry.is_transient).

    Private: `_create_scoped_session`. Public route: none; Optuna's public methods are each a
    transaction of their own, and a write with its token must be one.
    """
    return _create_scoped_session(storage.scoped_session, ignore_integrity_error)


def lock_study(session_: Session, study_id: int) -> None:
    """Locks the study's row until the transaction ends (what serialises the numbering of new
    trials, as Optuna's own trial creation does).

    Private: `models.StudyModel.find_or_raise_by_id(..., for_update=True)`.
    """
    models.StudyModel.find_or_raise_by_id(study_id, session_, for_update=True)


def lock_trial(session_: Session, trial_id: int) -> Any:
    """The trial's row (a `TRIALS` object), locked until the transaction ends.

    Private: `models.TrialModel.find_or_raise_by_id(..., for_update=True)`.
    """
    return models.TrialModel.find_or_raise_by_id(trial_id, session_, for_update=True)


def new_trial(storage: optuna.storages.RDBStorage, session_: Session, study_id: int,
              template: FrozenTrial | None) -> Any:
    """Adds a trial made from `template` (params, values, attrs, state; None: a RUNNING trial)
    inside the open transaction and returns its row, numbered. Lock the study first.

    Private: `RDBStorage._get_prepared_new_trial`. Public route: `create_new_trial`, which
    commits on its own (the creation's token must join its transaction).
    """
    return storage._get_prepared_new_trial(study_id, template, session_)


def set_trial_attr(storage: optuna.storages.RDBStorage, session_: Session, trial_id: int,
                   key: str, value: Any, *, user: bool = False) -> None:
    """Sets a system (or, `user`, a user) attr of an unfinished trial inside the open
    transaction (an upsert).

    Private: `RDBStorage._set_trial_attr_without_commit`. Public route:
    `set_trial_system_attr`, a transaction of its own.
    """
    storage._set_trial_attr_without_commit(session_, USER_ATTRS if user else SYSTEM_ATTRS,
                                           trial_id, key, value)


def set_trial_value(storage: optuna.storages.RDBStorage, session_: Session, row: Any,
                    objective: int, value: float) -> None:
    """The trial's value for `objective`, inside the open transaction.

    Private: `RDBStorage._set_trial_value_without_commit`. Public route:
    `set_trial_state_values`, a transaction of its own (a state token must join it).
    """
    storage._set_trial_value_without_commit(session_, row, objective, value)


def set_intermediate_value(storage: optuna.storages.RDBStorage, session_: Session,
                           trial_id: int, step: int, value: float) -> None:
    """One step's intermediate value, inside the open transaction.

    Private: `RDBStorage._set_trial_intermediate_value_without_commit`. Public route:
    `set_trial_intermediate_value`, one transaction per step.
    """
    storage._set_trial_intermediate_value_without_commit(session_, trial_id, step, value)


def beat(session_: Session, trial_id: int) -> None:
    """The trial's heartbeat, now, inside the open transaction (a state change to RUNNING: a
    migrated WAITING trial's claim, whose first beat it is).

    Private: `models.TrialHeartbeatModel`. Public route: `record_heartbeat`, a transaction of
    its own (a worker dying between the two would leave a RUNNING trial that never goes stale).
    """
    row = models.TrialHeartbeatModel.where_trial_id(trial_id, session_, True)
    if row is None:
        session_.add(models.TrialHeartbeatModel(trial_id=trial_id))
    else:
        row.heartbeat = session_.execute(func.now()).scalar()


def stale_trial_ids(storage: optuna.storages.BaseStorage, study_id: int) -> list[int]:
    """The study's RUNNING trials whose heartbeat is older than the grace period.

    Private: `_get_stale_trial_ids`. Public route: `optuna.storages.fail_stale_trials`, which
    fails them itself, without the reason (and the permanent mark) the project writes on a
    trial before failing it (search.study.recovery).
    """
    return storage._get_stale_trial_ids(study_id)


def trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    """The storage's id of a trial (a `Trial` or a `FrozenTrial`).

    Private: `_trial_id`. Public route: `storage.get_trial_id_from_study_id_trial_number(
    study_id, trial.number)`, a database round trip per trial (Optuna's cache answers it only
    for trials it has read), on paths taken for every trial of a claim, a batch or a fill.
    """
    return trial._trial_id


def storage_of(study: optuna.Study) -> optuna.storages.BaseStorage:
    """The storage under `study`: for an RDB storage, the `RDBStorage` itself (Optuna wraps it
    in its cache), whose engine holds the queue's tables and whose counts the project reads.

    Private: `Study._storage`, `_CachedStorage._backend`. Public route: none (a `Study` does not
    expose its storage); callers that hold the storage pass it instead.
    """
    storage = study._storage
    return storage._backend if isinstance(storage, _CachedStorage) else storage


def remember_running(study: optuna.Study, trials: Sequence[tuple[int, int]]) -> None:
    """Puts claimed trials, (trial id, number) pairs, into Optuna's cache around the storage as
    RUNNING trials known by id and number only: the cache's `set_trial_param` (every suggest)
    looks a trial's study up there. The cache reads unfinished trials again whenever it is
    asked for the study's trials, and `optuna.Trial` reads its own trial from the storage.

    Private: `Study._storage`, `Study._study_id`, `_CachedStorage._lock`, `._studies`,
    `._add_trials_to_cache`, `_StudyInfo`. Public route: `study.get_trials()`, which makes the
    cache read every unfinished trial of the study (the whole queue) on every claim.
    """
    cached = study._storage
    if not isinstance(cached, _CachedStorage):
        return
    now = datetime.now()
    frozen = [FrozenTrial(
        number=number, state=TrialState.RUNNING, value=None, values=None,
        datetime_start=now, datetime_complete=None, params={}, distributions={},
        user_attrs={}, system_attrs={}, intermediate_values={}, trial_id=trial_id_)
        for trial_id_, number in trials]
    with cached._lock:
        info = cached._studies.setdefault(study._study_id, _StudyInfo())
        cached._add_trials_to_cache(study._study_id, frozen)
        info.unfinished_trial_ids.update(trial_id_ for trial_id_, _ in trials)


def defer_sklearn(make_guard: Callable[[ModuleType], Any]) -> None:
    """After `optuna.importance` was imported with scikit-learn held back: replaces the failed
    import guard of each module in `SKLEARN_IMPORTERS` by `make_guard(module)`, which imports
    scikit-learn when an evaluator of that module is built.

    Private: those modules and their `_imports` guard (`is_successful()`, `check()`). Public
    route: `import optuna.importance`, which imports scikit-learn (and SciPy, ~1.2-1.5 s) for
    evaluators the report never uses.
    """
    for name in SKLEARN_IMPORTERS:
        module = sys.modules.get(name)
        guard = getattr(module, "_imports", None)
        if guard is not None and not guard.is_successful():
            module._imports = make_guard(module)

