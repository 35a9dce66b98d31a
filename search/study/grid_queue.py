"""A grid study as a queue of points in the queue's own tables (search.queue), so each grid
point runs exactly once; Optuna is reached through its public storage API.

Optuna's GridSampler picks the next point from what it sees; workers that ask at the same
moment can pick the same point. Instead, every grid point is a row of `fer_search_queue`
(queued under the study lock, `fill_queue`), and a worker claims rows in one transaction
(`FOR UPDATE SKIP LOCKED` on PostgreSQL: search.queue.items.claim), then creates each claimed
point's trial through Optuna's public `create_new_trial` (a RUNNING trial carrying the point's
params) and links it to its row.

Exactly once, by construction:

- One row per grid point for its life (unique (study, point)); who holds a point is its row's
  state and trial, never inferred from a trial's params.
- A claim marks its rows with its token in the claim's transaction; a retry whose first attempt
  committed unseen finds them by the token. A row is linked to its trial only while it is
  still that claim's (`items.link`): a claim recovered meanwhile (its worker was taken for
  dead) fails the trial it made instead of running it.
- A dead worker's trial (its heartbeat stopped) is failed first, with its reason, and its row
  queued again after (`recover_lost`): a live worker that was merely cut off then finds its
  trial failed when it reports, and the point is not completed twice. A recovery cut short
  between the two steps leaves a claimed row with a failed trial, which the next fill settles
  and re-queues.
- A claimed row whose trial was never created (its worker died in between) is queued again
  after the grace period.

Trials that failed on their own merits (the loss diverged, the trial timed out) are not retried.
Random and TPE studies use Optuna's own queue (WAITING trials that its `ask` takes, atomically);
their lost trials' copies are added through the public `create_new_trial` (search.study.recovery).

Batches (`claim_batch`): grid points the trainer may train in one call (equal
`trainer.batch_key`, while `trainer.batch_cost` fits: search.study.batches) are claimed
together, so that one worker hands them to the trainer at once.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
import time
import uuid
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import (
    FAILED_TRIAL_ATTR,
    TRIAL_REASON_ATTR,
    TRIAL_RUN_ID_ATTR,
    failed_for_good,
)
from search.queue import items
from search.queue.models import DONE, FAILED
from search.spec.loader import StudySpec
from search.storage import optuna_private as private

POINT_ATTR = "fer_search:grid_point"  # system attr: the grid point's canonical JSON
# System attr of a copy whose trial died with its worker while sharing a pass: the copy trains
# alone (claims, ask_batch.split), so a trial that kills its worker is found and uses up its
# own retries only.
ALONE_ATTR = "fer_search:alone"
CLAIM_LOST = "its claim was recovered before its trial started (the point was re-queued)"

T = TypeVar("T")

# A batch's key (None: the point trains alone), and whether points of one key fit one batch.
BatchOf = Callable[[dict[str, Any]], Hashable | None]
Fits = Callable[[Sequence[dict[str, Any]]], bool]


def grid_points(spec: StudySpec) -> list[dict[str, Any]]:
    """Every combination of the grid, in an order shuffled by the spec's seed."""
    grid = spec.grid
    names = list(grid)
    combos = [dict(zip(names, values, strict=True)) for values in itertools.product(*grid.values())]
    random.Random(spec.seed).shuffle(combos)
    return combos


def canonical(params: dict[str, Any]) -> str:
    """A grid point's identity: its params as JSON with sorted names."""
    return json.dumps(params, sort_keys=True, separators=(",", ":"))


def point_key(params: dict[str, Any]) -> str:
    """The point's key in the queue (a fixed-length digest of `canonical`)."""
    return hashlib.sha256(canonical(params).encode()).hexdigest()


def fill_queue(study: optuna.Study, spec: StudySpec, batch_of: BatchOf | None = None,
               first: Sequence[dict[str, Any]] = ()) -> int:
    """Queues the grid points that have no row, and re-queues those whose trial was
    interrupted (FAIL, not permanently); returns how many. Call it under `storage.study_lock`.

    Args:
        batch_of: a grid point's batch key; given, the points are queued batch by batch (in
            the seed's order of their first members), so that a claim's window holds a whole
            batch.
        first: grid points to queue ahead of all others, in this order (a warm start's best:
            search.study.warm_start); claims take the queue in order. A point queued already
            keeps its place.
    """
    storage = private.storage_of(study)
    study_id = study_id_of(study, storage)
    engine = storage.engine
    _settle_claimed(storage, study_id)
    queued = 0
    for item_id, trial_id, template in retried(storage, items.failed, engine, study_id):
        # Interrupted (Ctrl-C, a crash): the copy names it, so that it resumes its checkpoint
        # and its MLflow run says whose work it carries on.
        old = storage.get_trial(trial_id)
        copy = requeued(old, template["point"])
        if retried(storage, items.requeue, engine, item_id, trial_id, copy,
                   bool(copy["system"].get(ALONE_ATTR))):
            queued += 1
    combos = grid_points(spec)
    ahead = {point_key(params) for params in first}
    return queued + enqueue(study, [*first, *(p for p in _batched(combos, batch_of)
                                              if point_key(p) not in ahead)])


def enqueue(study: optuna.Study, points: Sequence[dict[str, Any]]) -> int:
    """Queues these grid points, in this order, after the queue's last; a point queued already
    (in whatever state) keeps its row. Returns how many were queued."""
    storage = private.storage_of(study)
    entries = [(point_key(params), _template(params), False) for params in points]
    return retried(storage, items.enqueue, storage.engine, study_id_of(study, storage), entries)


def _batched(combos: list[dict[str, Any]], batch_of: BatchOf | None) -> list[dict[str, Any]]:
    """`combos` with each batch's points together, batches in the order of their first point."""
    if batch_of is None:
        return combos
    batches: dict[Hashable, list[dict[str, Any]]] = {}
    for index, params in enumerate(combos):
        key = _batch_key(batch_of, params)
        batches.setdefault(("alone", index) if key is None else key, []).append(params)
    return [params for members in batches.values() for params in members]


def _settle_claimed(storage, study_id: int) -> None:
    """Claimed rows whose trial finished but was never settled (its worker died between its
    report and `settle`, or a recovery was cut short): settled now, by the trial's state."""
    for _, trial_id in retried(storage, items.claimed_since, storage.engine, study_id, 0):
        trial = storage.get_trial(trial_id)
        if trial.state.is_finished():
            _settle(storage, [trial])


def settle(study: optuna.Study, trials: Sequence[optuna.Trial]) -> None:
    """The queue rows of a claim's trials, after they ran: done (complete, pruned, failed for
    good) or failed (interrupted: the next fill re-queues it). Unfinished ones stay claimed
    (their worker stopped with them running: their heartbeat decides)."""
    storage = private.storage_of(study)
    _settle(storage, [storage.get_trial(private.trial_id(trial)) for trial in trials])


def _settle(storage, trials: Sequence[FrozenTrial]) -> None:
    done = [private.trial_id(t) for t in trials if t.state.is_finished()
            and (t.state != TrialState.FAIL or failed_for_good(t))]
    interrupted = [private.trial_id(t) for t in trials
                   if t.state == TrialState.FAIL and not failed_for_good(t)]
    retried(storage, items.settle, storage.engine, done, DONE)
    retried(storage, items.settle, storage.engine, interrupted, FAILED)


def queue_full(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether every grid point has its row, none waits to be re-queued, and every claimed row
    has its running trial (a few counts): then `fill_queue` has nothing to do."""
    storage = private.storage_of(study)
    study_id = study_id_of(study, storage)
    found = retried(storage, items.counts, storage.engine, study_id)
    return (sum(found.values()) == len(grid_points(spec)) and not found.get(FAILED)
            and found.get("claimed", 0) <= count(study, TrialState.RUNNING))


def requeued(old: FrozenTrial, params: dict[str, Any] | None, *, alone: bool = False,
             counted: bool = True) -> dict[str, Any]:
    """What the next attempt of `old` carries (a queue row's template): its grid point (never
    `old`'s params, which a trial cut off while suggesting may hold only in part; None: `old`'s
    params and distributions, a trial that was asked), Optuna's `failed_trial` and
    `retry_history` (whose retry it is), and the user attr `failed_trial` when `old` has an
    MLflow run to resume.

    Args:
        alone: the copy trains alone (`ALONE_ATTR`); a copy of such a copy does too.
        counted: `old`'s end counts as an attempt (in `retry_history`, which MAX_RETRY caps).
    """
    system = {k: v for k, v in old.system_attrs.items() if not k.startswith("fer_search:")}
    system.pop("fixed_params", None)
    system["failed_trial"] = system.get("failed_trial", old.number)
    system["retry_history"] = [*system.get("retry_history", []), *([old.number] * counted)]
    if alone or old.system_attrs.get(ALONE_ATTR):
        system[ALONE_ATTR] = True
    user = {FAILED_TRIAL_ATTR: old.number} if old.user_attrs.get(TRIAL_RUN_ID_ATTR) else {}
    return {"point": params, "system": system, "user": user}


def _template(params: dict[str, Any]) -> dict[str, Any]:
    return {"point": params, "system": {}, "user": {}}


# A Study's id in its storage never changes: read once per Study object, by name.
_STUDY_IDS: weakref.WeakKeyDictionary[optuna.Study, int] = weakref.WeakKeyDictionary()


def study_id_of(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """The storage's id of `study` (Optuna's public route, its name), read once per `Study`:
    every claim and count needs it."""
    found = _STUDY_IDS.get(study)
    if found is None:
        found = _STUDY_IDS[study] = storage.get_study_id_from_name(study.study_name)
    return found


def queued_params(trial: FrozenTrial) -> dict[str, Any] | None:
    """The grid point a trial was claimed for (None: a trial that was asked, not queued)."""
    point = trial.system_attrs.get(POINT_ATTR)
    if point is not None:
        return json.loads(point)
    return trial.system_attrs.get("fixed_params")


def params_of(trial: FrozenTrial) -> dict[str, Any]:
    """A trial's grid point: the one it was claimed for; the params of a trial that was asked."""
    return queued_params(trial) or trial.params


def claim_next(study: optuna.Study, storage: optuna.storages.BaseStorage) -> optuna.Trial | None:
    """Claims one queued point for this process, or None when the queue is empty."""
    trials = claim_batch(study, storage, lambda params: None)
    return trials[0] if trials else None


def claim_batch(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    batch_of: BatchOf,
    fits: Fits | None = None,
    *,
    max_trials: int | None = None,
    window: int = items.WINDOW,
) -> list[optuna.Trial]:
    """Claims the points of one batch for this process and starts their trials; [] when the
    queue is empty.

    One transaction (search.queue.items.claim): the first queued rows that no other claim is
    looking at (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises claims), at most
    `window`; the first of them decides the batch's key, and the rows of that key among them
    are claimed together, each while the batch still `fits`. Then each point's trial is
    created (Optuna's public `create_new_trial`: RUNNING, beating from its creation, the point
    in Optuna's `fixed_params`, which its `suggest` calls return) and linked to its row. When
    every queued row is in other claims' windows, it waits a moment and looks again.

    Args:
        batch_of: a grid point's batch key; None: the point trains alone.
        fits: whether points of one key (the chosen ones and a candidate) fit one batch; a
            candidate that does not is skipped (a later one may still fit). None: no cap.
        max_trials: at most this many trials (what is left of `--n-trials`); None: no cap.
        window: at most this many queued rows looked at (and locked for the claim's moment).
    """
    study_id = study_id_of(study, storage)
    max_trials = max(1, max_trials) if max_trials is not None else None

    def key_of(candidate: items.Queued) -> Hashable | None:
        # A copy of a trial that died with its worker in a shared pass trains alone.
        return None if candidate.alone else _batch_key(batch_of, candidate.params)

    def choose(queued: Sequence[items.Queued]) -> list[int]:
        first = key_of(queued[0])
        if first is None:
            return [queued[0].item_id]
        chosen: list[items.Queued] = []
        for candidate in queued:
            if max_trials is not None and len(chosen) >= max_trials:
                break
            if key_of(candidate) != first:
                continue
            if chosen and fits is not None and not fits(
                    [c.params for c in chosen] + [candidate.params]):
                continue  # over the cap; a later candidate may still fit (e.g. a shared head)
            chosen.append(candidate)
        return [candidate.item_id for candidate in chosen]

    pause = 0.01
    while True:
        claimed = _claim(storage, study_id, choose, max(1, window))
        if claimed:
            started = [_start(storage, study_id, row) for row in claimed]
            started = [trial for trial in started if trial is not None]
            if started:
                # Into Optuna's cache around the storage (its `suggest` looks the trial up).
                private.remember_running(study, started)
                return [optuna.Trial(study, trial_id) for trial_id, _ in started]
            continue  # every row of the claim was taken back meanwhile: claim again
        if not retried(storage, items.any_queued, storage.engine, study_id):
            return []
        # Every queued row is in another claim's window for a moment: look again.
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.2)


def _claim(storage, study_id: int, choose: items.Choose, window: int) -> list[items.Claimed]:
    """One claim, retried through a database outage; a retry whose first attempt committed
    unseen returns that attempt's rows (its token)."""
    token = uuid.uuid4().hex
    attempts = 0

    def claim() -> list[items.Claimed]:
        nonlocal attempts
        attempts += 1
        if attempts > 1:
            mine = items.claimed_by(storage.engine, study_id, token)
            if mine:
                return mine
        return items.claim(storage.engine, study_id, choose, token, window)

    return retried(storage, claim)


def _start(storage, study_id: int, row: items.Claimed) -> tuple[int, int] | None:
    """Creates (or, for a row migrated with its WAITING trial, starts) the claimed row's trial
    and links it; (trial id, number), or None when the claim was recovered meanwhile."""
    point = row.template["point"]
    if row.trial_id is not None:
        trial_id = row.trial_id
        if not storage.set_trial_state_values(trial_id, TrialState.RUNNING):
            return None  # not WAITING any more: not this claim's to run
        number = storage.get_trial_number_from_id(trial_id)
    else:
        # Optuna's own form of a queued trial's point (`fixed_params`, which `suggest` returns),
        # and its identity.
        system = {**row.template["system"], "fixed_params": point,
                  POINT_ATTR: canonical(point)}
        template = optuna.trial.create_trial(
            state=TrialState.RUNNING, system_attrs=system, user_attrs=row.template["user"])
        if hasattr(storage, "create_trial"):  # ResilientRDBStorage: the trial, in one call
            created = storage.create_trial(study_id, template)
            trial_id, number = private.trial_id(created), created.number
        else:
            trial_id = storage.create_new_trial(study_id, template)
            number = storage.get_trial_number_from_id(trial_id)
    if not retried(storage, items.link, storage.engine, row.item_id, row.token, trial_id):
        storage.set_trial_user_attr(trial_id, TRIAL_REASON_ATTR, CLAIM_LOST)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
        return None
    return trial_id, number


def retried(storage, call: Callable[..., T], *args: Any) -> T:
    """`call(*args)` (one of the queue's transactions, search.queue.items) retried through a
    database outage when `storage` retries its calls (`ResilientRDBStorage.retrying`), else
    once."""
    retrying = getattr(storage, "retrying", None)
    if retrying is None:
        return call(*args)
    return retrying(lambda: call(*args), call.__name__)


def _batch_key(batch_of: BatchOf, params: dict[str, Any] | None) -> Hashable | None:
    if params is None:  # not a grid point: alone
        return None
    try:
        return batch_of(params)
    except Exception:  # a point the trainer cannot key (a bad value): it trains, and fails,
        return None    # alone


def count_failed_for_good(study: optuna.Study) -> int:
    """How many of the study's trials failed for good (FAIL with the permanent mark: their own
    merits, or given up after MAX_RETRY), counted in the storage across every worker."""
    backend = private.storage_of(study)
    if hasattr(backend, "count_failed_for_good"):
        return backend.count_failed_for_good(study_id_of(study, backend))
    return sum(1 for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
               if failed_for_good(t))


def count(study: optuna.Study, *states: TrialState) -> int:
    """How many of the study's trials are in `states`: one COUNT on the project's storage
    (workers poll it at a study's end), else Optuna's read of the trials."""
    backend = private.storage_of(study)
    if hasattr(backend, "count_trials"):
        return backend.count_trials(study_id_of(study, backend), states)
    return len(study.get_trials(deepcopy=False, states=states))
