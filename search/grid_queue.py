"""A grid study as a queue of WAITING trials, so each grid point runs exactly once.

Optuna's GridSampler picks the next point from what it sees; workers that ask at the same moment
can pick the same point. Instead, every grid point not yet done becomes an enqueued WAITING trial
(under the study lock), and a worker claims one by moving it WAITING -> RUNNING, a transition the
storage performs for one caller only. A trial whose worker dies is failed by heartbeat and
re-queued by Optuna's retry callback; an interrupted or crashed trial is re-queued at the next
start. Trials that failed on their own merits (the loss diverged) are not retried.
"""

from __future__ import annotations

import itertools
import random
from typing import Any

import optuna
from optuna.trial import TrialState

from search.contracts import PERMANENT_FAILURE, TRIAL_FAILURE_ATTR
from search.spec import StudySpec

_TAKEN = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.WAITING, TrialState.RUNNING)


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
            params = trial.params or trial.system_attrs.get("fixed_params", {})
            held.add(_key(params, names))
    missing = [p for p in grid_points(spec) if _key(p, names) not in held]
    for params in missing:
        study.enqueue_trial(params)
    return len(missing)


def claim_next(study: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """Claims a WAITING trial for this process, or None when the queue is empty."""
    study_id = storage.get_study_id_from_name(study.study_name)
    for frozen in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, frozen.number)
        try:
            claimed = storage.set_trial_state_values(trial_id, state=TrialState.RUNNING)
        except RuntimeError:  # finished meanwhile by another worker
            continue
        if claimed:
            return optuna.Trial(study, trial_id)
    return None


def count(study: optuna.Study, *states: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=states))
