"""A grid study as a queue of WAITING trials, so each grid point runs exactly once.

Optuna's GridSampler picks the next point from what it sees; workers that ask at the same moment
can pick the same point. Instead, every grid point not yet done becomes an enqueued WAITING trial
(under the study lock), and a worker claims one by moving it WAITING -> RUNNING, a transition the
storage performs for one caller only.

Exactly once, by construction (issue 18):

- A point's identity is written when it is queued, in the same transaction as its WAITING trial:
  the system attr `points.POINT_ATTR` and a row of the storage's point table (study, point) ->
  trial, whose primary key admits one live trial per point (search.storage.points). Who holds a
  point is read from that table, never inferred from a trial's params, which a claimed trial
  commits one suggest at a time.
- One re-queue path, `ResilientRDBStorage.replace_trial`, under the study lock: fail the old
  trial (stale: `recover_lost`) or take it (interrupted: `fill_queue`) and queue its copy, moving
  the point's row to it, in one transaction. A FAIL trial whose point is re-queued therefore
  always has its copy; there is no moment when a FAIL point looks free.
- Retried writes are idempotent: each carries a token written in its own transaction, looked up
  by a retry (search.storage.retry).

Trials that failed on their own merits (the loss diverged, the trial timed out) are not retried.

Groups (`claim_group`): grid points equal but for the axes one training pass can share (the
trainer's `group_key`: learning_rate, head_width, epochs) are claimed together, so that one
worker trains their heads in one pass. Points equal but for `epochs` are one head (the trainer's
`track_key`), so the cap counts heads, not trials. Each member is still claimed by its own
atomic WAITING -> RUNNING transition, so exactly-once holds per trial, not per group.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Hashable
from typing import Any

import optuna
from optuna.trial import TrialState

from search.contracts import (
    FAILED_TRIAL_ATTR,
    PERMANENT_FAILURE,
    TRIAL_FAILURE_ATTR,
    TRIAL_RUN_ID_ATTR,
)
from search.spec.loader import StudySpec
from search.storage import points
from search.storage.sessions import MAX_RETRY
from trainer import settings

_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)
# At most this many heads trained together by one worker. A group's pass costs about k times
# one head's arithmetic but one Python dispatch and one read of each batch: by k = 8 the
# per-batch overhead is already amortised to an eighth, while a larger k makes one worker hold
# (and, if it dies, hand back) more trials, and leaves other workers idle on a small grid. The
# quickstart's 24 points make two groups of 6 heads (12 trials: each head for 10 and 30
# epochs): one worker trains each group in one pass, two workers take one group each.
MAX_GROUP = settings.KNOBS["FER_SEARCH_MAX_GROUP"].default  # read at use: settings.max_group()
GroupOf = Callable[[dict[str, Any]], Hashable | None]


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the grid, in an order shuffled by the spec's seed."""
    grid = spec.grid
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(spec.seed).shuffle(combos)
    return combos


def fill_queue(study: optuna.Study, spec: StudySpec) -> int:
    """Queues the grid points that no trial holds, and re-queues those whose trial was
    interrupted (FAIL, not permanently); returns how many. Call it under `storage.study_lock`.

    A point's holder is read from the storage's point table (search.storage.points), never
    inferred from a trial's params: a claimed trial's params appear one suggest at a time. A
    study queued before the table existed has its holders adopted from their queued params.
    """
    storage = _backend(study)
    study_id = study._study_id
    points.drop_leftovers(storage, study_id)
    trials = study.get_trials(deepcopy=False)
    by_id = {trial._trial_id: trial for trial in trials}
    held = points.rows(storage, study_id)
    legacy: dict[str, list[optuna.trial.FrozenTrial]] = {}
    for trial in trials:
        params = queued_params(trial)
        if params is not None:
            legacy.setdefault(points.point_key(params), []).append(trial)
    queued = 0
    for params in grid_points(spec):
        key = points.point_key(params)
        holder = by_id.get(held.get(key, -1))
        if holder is None:
            holder = _legacy_holder(legacy.get(key, []))
            if holder is not None and not points.adopt(storage, study_id, key, holder._trial_id):
                continue  # adopted meanwhile by another process (one not holding the lock)
        if holder is None:
            if storage.enqueue_point(study_id, _queued_trial(params), key) is not None:
                queued += 1
        elif holder.state == TrialState.FAIL and not _permanent(holder):
            # Interrupted (Ctrl-C, a crash): the copy names it, so that it resumes its
            # checkpoint and its MLflow run says whose work it carries on.
            if storage.replace_trial(study_id, holder._trial_id, requeued(holder, params), key,
                                     stale=False):
                queued += 1
    return queued


def recover_lost(study: optuna.Study, storage, on_lost: Callable | None = None) -> list:
    """Fails each trial whose heartbeat stopped and queues its copy, in one transaction per
    trial (`ResilientRDBStorage.replace_trial`): the one re-queue path, with `fill_queue`'s.
    Call it under `storage.study_lock`. A grid point's copy takes over the point's row; a
    random or TPE trial's copy keeps its params for `ask` (as Optuna's retry callback did).
    A trial retried `MAX_RETRY` times is failed without a copy.

    Args:
        on_lost: called with (study, the failed trial) for each trial failed here.
    """
    if not storage.heartbeat_interval:
        return []
    study_id = study._study_id
    lost = []
    for trial_id in storage._get_stale_trial_ids(study_id):
        frozen = storage.get_trial(trial_id)
        params = queued_params(frozen)
        template = requeued(frozen, params)
        if len(template.system_attrs["retry_history"]) > MAX_RETRY:
            template = None
        key = points.point_key(params) if params is not None else None
        if storage.replace_trial(study_id, trial_id, template, key, stale=True):
            lost.append(frozen)
            if on_lost is not None:
                on_lost(study, frozen)
    return lost


def has_lost(study: optuna.Study, storage) -> bool:
    """Whether a trial's heartbeat stopped (a read without the lock, before taking it)."""
    return bool(storage.heartbeat_interval) and \
        bool(storage._get_stale_trial_ids(study._study_id))


def requeued(old: optuna.trial.FrozenTrial,
             params: dict[str, Any] | None) -> optuna.trial.FrozenTrial:
    """The WAITING copy of `old`: for a grid point, its point (never `old`'s params, which a
    trial cut off while suggesting holds only in part); else `old`'s params and attributes, as
    Optuna's retry callback copies them. Either way Optuna's `failed_trial` and
    `retry_history` say whose retry it is, and the user attr `failed_trial` names a trial
    with an MLflow run to resume."""
    system = {k: v for k, v in old.system_attrs.items() if not k.startswith("fer_search:")}
    system["failed_trial"] = system.get("failed_trial", old.number)
    system["retry_history"] = [*system.get("retry_history", []), old.number]
    if params is None:
        return optuna.trial.create_trial(
            state=TrialState.WAITING, params=old.params, distributions=old.distributions,
            user_attrs=old.user_attrs, system_attrs=system)
    user = {FAILED_TRIAL_ATTR: old.number} if old.user_attrs.get(TRIAL_RUN_ID_ATTR) else {}
    return _queued_trial(params, system, user)


def _queued_trial(params: dict[str, Any], system: dict | None = None,
                  user: dict | None = None) -> optuna.trial.FrozenTrial:
    """What `Study.enqueue_trial` creates, plus the point's identity (`points.POINT_ATTR`)."""
    system = {**(system or {}), "fixed_params": params,
              points.POINT_ATTR: points.canonical(params)}
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system,
                                     user_attrs=user or {})


def _legacy_holder(trials: list[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial | None:
    """Of a point's trials queued before the point table: the live or done one, else a
    permanent failure, else the last failure (to re-queue); None when it has none."""
    for wanted in (lambda t: t.state in _TAKEN, _permanent, lambda t: True):
        found = [t for t in trials if wanted(t)]
        if found:
            return found[-1]
    return None


def _permanent(trial: optuna.trial.FrozenTrial) -> bool:
    return trial.state == TrialState.FAIL and \
        trial.user_attrs.get(TRIAL_FAILURE_ATTR) == PERMANENT_FAILURE


def _backend(study: optuna.Study):
    """The study's RDB storage under Optuna's cache."""
    return getattr(study._storage, "_backend", study._storage)


def queued_params(trial: optuna.trial.FrozenTrial) -> dict[str, Any] | None:
    """The grid point a trial was queued for (None: a trial that was asked, not queued)."""
    point = trial.system_attrs.get(points.POINT_ATTR)
    if point is not None:
        return json.loads(point)
    return trial.system_attrs.get("fixed_params")


def params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A trial's grid point: the one it was queued for, whatever it has suggested so far;
    the params of a trial that was asked."""
    return queued_params(trial) or trial.params


def claim_next(study: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """Claims a WAITING trial for this process, or None when the queue is empty."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial = _claim(study, storage, study_id, frozen)
        if trial is not None:
            return trial
    return None


def claim_group(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    group_of: GroupOf,
    limit: int = MAX_GROUP,
    *,
    head_of: GroupOf | None = None,
    max_trials: int | None = None,
) -> list[optuna.Trial]:
    """Claims the trials of one group for this process (at most `limit` heads); [] when the
    queue is empty.

    The first WAITING trial this worker wins decides the group; the group's other WAITING
    trials are then claimed one by one, each by its own atomic WAITING -> RUNNING transition. A
    member claimed by another worker meanwhile is simply not in this worker's group (it is that
    worker's, and trains there: results do not depend on who trains which member).

    Meanwhile, another worker: it reads the same queue, tries the same first trial and loses it,
    takes that as "someone is taking this group" and moves on to the next group in the queue;
    only when every group it tried was being taken does it read the queue again, and then it
    takes what is left (a group's members beyond the first worker's `limit`, or ones that worker
    lost). So workers starting together spread over groups instead of splitting one.

    Args:
        group_of: a grid point's group key; None: the point trains alone.
        limit: at most this many heads (>= 1).
        head_of: a grid point's head (points with equal heads train as one head, e.g. equal but
            for `epochs`); None, or a None head: every point is a head of its own.
        max_trials: at most this many trials (what is left of `--n-trials`); None: no cap.
    """
    study_id = storage.get_study_id_from_name(study.study_name)
    max_trials = max(1, max_trials) if max_trials is not None else None
    while True:
        waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
        if not waiting:
            return []
        groups: dict[Hashable, list[optuna.trial.FrozenTrial]] = {}
        for frozen in waiting:
            key = _group_key(group_of, frozen)
            groups.setdefault(("alone", frozen.number) if key is None else key, []).append(frozen)
        for members in groups.values():
            claimed: list[optuna.Trial] = []
            heads: set[Hashable] = set()
            for frozen in members:
                if max_trials is not None and len(claimed) >= max_trials:
                    break
                head = _head_key(head_of, frozen)
                if head not in heads and len(heads) >= max(1, limit):
                    continue  # a new head over the cap; a member of a claimed head still fits
                trial = _claim(study, storage, study_id, frozen)
                if trial is not None:
                    claimed.append(trial)
                    heads.add(head)
                elif not claimed:
                    break  # another worker is taking this group: leave it to them
            if claimed:
                return claimed
        # Every group in our reading was being taken by others: read the queue again.


def _group_key(group_of: GroupOf, frozen: optuna.trial.FrozenTrial) -> Hashable | None:
    try:
        return group_of(params_of(frozen))
    except Exception:  # a point the trainer cannot key (a bad value): it trains, and fails, alone
        return None


def _head_key(head_of: GroupOf | None, frozen: optuna.trial.FrozenTrial) -> Hashable:
    head = _group_key(head_of, frozen) if head_of is not None else None
    return ("trial", frozen.number) if head is None else head


def _claim(study, storage, study_id: int, frozen) -> optuna.Trial | None:
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
    try:
        claimed = storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
    except RuntimeError:  # finished meanwhile by another worker
        return None
    return optuna.Trial(study, trial_id) if claimed else None


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
