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

Batches (`claim_batch`): grid points the trainer may train in one call (equal
`trainer.batch_key`, while `trainer.batch_cost` fits: search.study.batches) are claimed
together, so that one worker hands them to the trainer at once. Each member is still claimed by
its own atomic WAITING -> RUNNING transition, so exactly-once holds per trial, not per batch.
"""

from __future__ import annotations

import itertools
import json
import random
import time
import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import optuna
from optuna.trial import TrialState

from search.contracts import (
    FAILED_TRIAL_ATTR,
    PASS_MATES_ATTR,
    TRIAL_REASON_ATTR,
    TRIAL_RUN_ID_ATTR,
    failed_for_good,
)
from search.spec.loader import StudySpec
from search.storage import claims, points
from search.storage import optuna_private as private
from search.storage.sessions import MAX_RETRY

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


def fill_queue(study: optuna.Study, spec: StudySpec, batch_of: BatchOf | None = None,
               first: Sequence[dict[str, Any]] = ()) -> int:
    """Queues the grid points that no trial holds, and re-queues those whose trial was
    interrupted (FAIL, not permanently); returns how many. Call it under `storage.study_lock`.

    A point's holder is read from the storage's point table (search.storage.points), never
    inferred from a trial's params: a claimed trial's params appear one suggest at a time.

    Args:
        batch_of: a grid point's batch key; given, the points are queued batch by batch (in
            the seed's order of their first members), so that a claim's window
            (search.storage.claims) holds a whole batch.
        first: grid points to queue ahead of all others, in this order (a warm start's best:
            search.study.warm_start); claims take the queue in trial order. A point held
            already keeps its place.
    """
    storage = private.storage_of(study)
    study_id = study_id_of(study, storage)
    combos = grid_points(spec)
    if queue_full(study, spec):
        return 0  # every point held, none by a FAIL trial: nothing to read (a worker's start)
    points.drop_leftovers(storage, study_id)
    by_id = {private.trial_id(trial): trial for trial in study.get_trials(deepcopy=False)}
    held = points.rows(storage, study_id)
    queued = 0
    ahead = {points.point_key(params) for params in first}
    for params in [*first, *(p for p in _batched(combos, batch_of)
                             if points.point_key(p) not in ahead)]:
        key = points.point_key(params)
        holder = by_id.get(held.get(key, -1))
        if holder is None:
            if storage.enqueue_point(study_id, _queued_trial(params), key) is not None:
                queued += 1
        elif holder.state == TrialState.FAIL and not failed_for_good(holder):
            # Interrupted (Ctrl-C, a crash): the copy names it, so that it resumes its
            # checkpoint and its MLflow run says whose work it carries on.
            if storage.replace_trial(study_id, held[key], requeued(holder, params), key,
                                     stale=False):
                queued += 1
    return queued


def _batched(combos: list[dict[str, Any]], batch_of: BatchOf | None) -> list[dict[str, Any]]:
    """`combos` with each batch's points together, batches in the order of their first point."""
    if batch_of is None:
        return combos
    batches: dict[Hashable, list[dict[str, Any]]] = {}
    for index, params in enumerate(combos):
        key = _batch_key(batch_of, params)
        batches.setdefault(("alone", index) if key is None else key, []).append(params)
    return [params for members in batches.values() for params in members]


def recover_lost(study: optuna.Study, storage, on_lost: Callable | None = None) -> list:
    """Fails each trial whose heartbeat stopped and queues its copy, in one transaction per
    trial (`ResilientRDBStorage.replace_trial`): the one re-queue path, with `fill_queue`'s.
    Call it under `storage.study_lock`. A grid point's copy takes over the point's row; a
    random or TPE trial's copy keeps its params for `ask` (as Optuna's retry callback did).

    Finding the culprit: a trial that died while sharing its worker's pass (`PASS_MATES_ATTR`)
    may be the one that killed it, or a victim; its copy trains alone (`points.ALONE_ATTR`), so
    the victims complete and only the culprit dies again, using up its own retries. A trial
    that died `MAX_RETRY` + 1 times is failed for good, without a copy. Each failed trial gets
    its reason in the same transaction.

    Args:
        on_lost: called with (study, the failed trial, its reason) for each trial failed here.
    """
    if not storage.heartbeat_interval:
        return []
    study_id = study_id_of(study, storage)
    lost = []
    for trial_id in private.stale_trial_ids(storage, study_id):
        frozen = storage.get_trial(trial_id)
        params = queued_params(frozen)
        # It shared its pass: the culprit, or a victim. Its copy trains alone. A trial that
        # had not started (a later group of a batch: no MLflow run yet) did not kill anyone:
        # its death is not counted against its retries.
        started = bool(frozen.user_attrs.get(TRIAL_RUN_ID_ATTR))
        template = requeued(frozen, params, alone=bool(frozen.user_attrs.get(PASS_MATES_ATTR)),
                            counted=started)
        deaths = len(template.system_attrs["retry_history"])
        if deaths > MAX_RETRY:
            template = None
        reason = lost_reason(frozen, deaths, given_up=template is None, started=started)
        key = points.point_key(params) if params is not None else None
        if storage.replace_trial(study_id, trial_id, template, key, stale=True, reason=reason):
            lost.append(frozen)
            if on_lost is not None:
                on_lost(study, frozen, reason)
    return lost


def lost_reason(trial: optuna.trial.FrozenTrial, deaths: int, *, given_up: bool,
                started: bool = True) -> str:
    """Why a trial whose worker died was failed, in words: with whom it shared the pass, which
    attempt it was, and whether it was given up."""
    if not started:
        return ("worker lost (no heartbeat) before this trial started training (another trial "
                "of its batch killed it?); re-queued, not counted as an attempt")
    if given_up:
        return (f"killed its worker {deaths} times (out of memory? no heartbeat): given up "
                f"after MAX_RETRY={MAX_RETRY} retries")
    mates = trial.user_attrs.get(PASS_MATES_ATTR) or []
    where = (f" while training in one pass with trials {', '.join(map(str, mates))}"
             if mates else "")
    then = "re-queued to train alone, to find the culprit" if mates else "re-queued"
    return (f"worker lost (no heartbeat: killed, out of memory?){where}; {then} (attempt "
            f"{deaths} of {MAX_RETRY + 1})")


def queue_full(study: optuna.Study, spec: StudySpec) -> bool:
    """Whether every grid point is queued and none is held by a FAIL trial (one query): then
    `fill_queue` has nothing to do."""
    storage = private.storage_of(study)
    return points.held_and_failed(storage, study_id_of(study, storage)) == \
        (len(grid_points(spec)), 0)


def has_lost(study: optuna.Study, storage) -> bool:
    """Whether a trial's heartbeat stopped (a read without the lock, before taking it)."""
    return bool(storage.heartbeat_interval) and \
        bool(private.stale_trial_ids(storage, study_id_of(study, storage)))


def requeued(old: optuna.trial.FrozenTrial, params: dict[str, Any] | None, *,
             alone: bool = False, counted: bool = True) -> optuna.trial.FrozenTrial:
    """The WAITING copy of `old`: for a grid point, its point (never `old`'s params, which a
    trial cut off while suggesting holds only in part); else `old`'s params and attributes, as
    Optuna's retry callback copies them. Either way Optuna's `failed_trial` and
    `retry_history` say whose retry it is, and the user attr `failed_trial` names a trial
    with an MLflow run to resume.

    Args:
        alone: the copy trains alone (`points.ALONE_ATTR`); a copy of such a copy does too.
        counted: `old`'s end counts as an attempt (in `retry_history`, which MAX_RETRY caps).
    """
    system = {k: v for k, v in old.system_attrs.items() if not k.startswith("fer_search:")}
    system["failed_trial"] = system.get("failed_trial", old.number)
    system["retry_history"] = [*system.get("retry_history", []), *([old.number] * counted)]
    if alone or old.system_attrs.get(points.ALONE_ATTR):
        system[points.ALONE_ATTR] = True
    if params is None:
        # The copy's own run, mates and end are its own (the old run: `retry_history`).
        user = {k: v for k, v in old.user_attrs.items()
                if k not in (PASS_MATES_ATTR, TRIAL_REASON_ATTR, TRIAL_RUN_ID_ATTR)}
        return optuna.trial.create_trial(
            state=TrialState.WAITING, params=old.params, distributions=old.distributions,
            user_attrs=user, system_attrs=system)
    user = {FAILED_TRIAL_ATTR: old.number} if old.user_attrs.get(TRIAL_RUN_ID_ATTR) else {}
    return _queued_trial(params, system, user)


def _queued_trial(params: dict[str, Any], system: dict | None = None,
                  user: dict | None = None) -> optuna.trial.FrozenTrial:
    """What `Study.enqueue_trial` creates, plus the point's identity (`points.POINT_ATTR`)."""
    system = {**(system or {}), "fixed_params": params,
              points.POINT_ATTR: points.canonical(params)}
    return optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=system,
                                     user_attrs=user or {})


# A Study's id in its storage never changes: read once per Study object, by name.
_STUDY_IDS: weakref.WeakKeyDictionary[optuna.Study, int] = weakref.WeakKeyDictionary()


def study_id_of(study: optuna.Study, storage: optuna.storages.BaseStorage) -> int:
    """The storage's id of `study` (Optuna's public route, its name), read once per `Study`:
    every claim and count needs it."""
    found = _STUDY_IDS.get(study)
    if found is None:
        found = _STUDY_IDS[study] = storage.get_study_id_from_name(study.study_name)
    return found


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
    trials = claim_batch(study, storage, lambda params: None)
    return trials[0] if trials else None


def claim_batch(
    study: optuna.Study,
    storage: optuna.storages.BaseStorage,
    batch_of: BatchOf,
    fits: Fits | None = None,
    *,
    max_trials: int | None = None,
    window: int = claims.WINDOW,
) -> list[optuna.Trial]:
    """Claims the trials of one batch for this process; [] when the queue is empty.

    One transaction (search.storage.claims): the first WAITING trials of the queue that no
    other claim is looking at (`FOR UPDATE SKIP LOCKED` on PostgreSQL; SQLite serialises
    claims), at most `window`; the first of them decides the batch's key, and the trials of that
    key among them are set RUNNING together, each while the batch still `fits`. Its cost does
    not grow with the queue, and workers claiming at once take different windows instead of
    waiting for one another. A batch whose members lie beyond the window is trained in more
    than one claim (the queue is filled batch by batch, `fill_queue`, so that this is rare);
    results do not depend on who trains which member. When every WAITING trial is in other
    claims' windows, it waits a moment and looks again.

    Args:
        batch_of: a grid point's batch key; None: the point trains alone.
        fits: whether points of one key (the chosen ones and a candidate) fit one batch; a
            candidate that does not is skipped (a later one may still fit). None: no cap.
        max_trials: at most this many trials (what is left of `--n-trials`); None: no cap.
        window: at most this many WAITING trials looked at (and locked for the claim's
            moment): about what one claim can take (search.study.batches.Batching.window). A
            larger window locks rows that other claims then skip.
    """
    study_id = study_id_of(study, storage)
    max_trials = max(1, max_trials) if max_trials is not None else None

    seen: dict[int, claims.Waiting] = {}

    def key_of(candidate: claims.Waiting) -> Hashable | None:
        # A copy of a trial that died with its worker in a shared pass trains alone.
        return None if candidate.alone else _batch_key(batch_of, candidate.params)

    def choose(waiting: Sequence[claims.Waiting]) -> list[int]:
        seen.update((candidate.trial_id, candidate) for candidate in waiting)
        first = key_of(waiting[0])
        if first is None:
            return [waiting[0].trial_id]
        chosen: list[claims.Waiting] = []
        for candidate in waiting:
            if max_trials is not None and len(chosen) >= max_trials:
                break
            if key_of(candidate) != first:
                continue
            if chosen and fits is not None and not fits(
                    [c.params for c in chosen] + [candidate.params]):
                continue  # over the cap; a later candidate may still fit (e.g. a shared head)
            chosen.append(candidate)
        return [candidate.trial_id for candidate in chosen]

    pause = 0.01
    while True:
        claimed = storage.claim_waiting(study_id, choose, max(1, window))
        if claimed:
            # Into Optuna's cache around the storage (its `suggest` looks the trial up there).
            private.remember_running(study, [(t, seen[t].number) for t in claimed])
            return [optuna.Trial(study, trial_id) for trial_id in claimed]
        if not storage.any_waiting(study_id):
            return []
        # Every WAITING trial is in another claim's window for a moment: look again.
        time.sleep(pause * random.uniform(0.5, 1.5))
        pause = min(pause * 2, 0.2)


def _batch_key(batch_of: BatchOf, params: dict[str, Any] | None) -> Hashable | None:
    if params is None:  # not a grid point (a random study's copy): alone
        return None
    try:
        return batch_of(params)
    except Exception:  # a point the trainer cannot key (a bad value): it trains, and fails, alone
        return None


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
