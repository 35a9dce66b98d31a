"""A grid study as a queue of WAITING trials, so each grid point runs exactly once.

Optuna's GridSampler picks the next point from what it sees; workers that ask at the same moment
can pick the same point. Instead, every grid point not yet done becomes an enqueued WAITING trial
(under the study lock), and a worker claims one by moving it WAITING -> RUNNING, a transition the
storage performs for one caller only. A trial whose worker dies is failed by heartbeat and
re-queued by Optuna's retry callback; an interrupted or crashed trial is re-queued at the next
start. Trials that failed on their own merits (the loss diverged, the trial timed out) are not
retried.

Groups (`claim_group`): grid points equal but for the axes one training pass can share (the
trainer's `group_key`: learning_rate, head_width, epochs) are claimed together, so that one
worker trains their heads in one pass. Points equal but for `epochs` are one head (the trainer's
`track_key`), so the cap counts heads, not trials. Each member is still claimed by its own
atomic WAITING -> RUNNING transition, so exactly-once holds per trial, not per group.
"""

from __future__ import annotations

import itertools
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
    points = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(spec.seed).shuffle(points)
    return points


def _key(params: dict[str, Any], names: list[str]) -> tuple:
    return tuple(params.get(name) for name in names)


def fill_queue(study: optuna.Study, spec: StudySpec) -> int:
    """Enqueues the grid points that no trial holds or has done; returns how many. Call it under
    `storage.study_lock`."""
    names = list(spec.grid)
    held = set()
    for trial in study.get_trials(deepcopy=False):
        if trial.state in _TAKEN or trial.user_attrs.get(TRIAL_FAILURE_ATTR) == PERMANENT_FAILURE:
            held.add(_key(params_of(trial), names))
    missing = [p for p in grid_points(spec) if _key(p, names) not in held]
    interrupted = _last_failures(study, names)
    for params in missing:
        # A point whose last trial was interrupted (Ctrl-C, a crash) names that trial, so that
        # the new one resumes its checkpoint and its MLflow run says whose work it carries on.
        failed = interrupted.get(_key(params, names))
        study.enqueue_trial(params, user_attrs={FAILED_TRIAL_ATTR: failed}
                            if failed is not None else None)
    return len(missing)


def _last_failures(study: optuna.Study, names: list[str]) -> dict[tuple, int]:
    """The latest retryable FAIL trial with an MLflow run, by grid point."""
    last: dict[tuple, int] = {}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        if trial.user_attrs.get(TRIAL_FAILURE_ATTR) != PERMANENT_FAILURE and \
                trial.user_attrs.get(TRIAL_RUN_ID_ATTR):
            last[_key(params_of(trial), names)] = trial.number  # trials come in number order
    return last


def params_of(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """A queued trial's grid point (enqueued ones keep it in `fixed_params` until claimed)."""
    return trial.params or trial.system_attrs.get("fixed_params", {})


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
