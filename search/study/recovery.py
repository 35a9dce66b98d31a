"""Dead workers' trials: found by their stopped heartbeat, failed with the reason, and tried
again (the one re-queue path of grid, random and TPE studies alike), under the study lock.

- A grid point's trial is failed first (its reason, and the permanent mark when given up,
  written before the state, through Optuna's public storage API), then its queue row is
  queued again with the copy's template (search.queue.items.requeue, only while the row still
  holds that trial). A live worker that was merely cut off finds its trial failed when it
  reports: the point is never completed twice. A recovery cut short between the two steps
  leaves a claimed row with a failed trial, which the next fill settles and re-queues
  (search.study.grid_queue.fill_queue).
- A random or TPE trial (asked, in Optuna's own queue) gets its copy first: a WAITING trial
  with its params (`create_new_trial`, system attr `COPY_OF_ATTR`), which Optuna's `ask` takes
  before making a new trial; then the old trial is failed. A recovery cut short between the
  two finds the copy by that attr and makes no second; a trial that finished meanwhile (its
  worker was alive) has its copy withdrawn. Asks happen under the same study lock, so no ask
  takes a copy in between.
- A claimed grid row whose trial was never created (its worker died between its claim and the
  trial's creation) is queued again once the grace period has passed.

Finding the culprit: a trial that died while sharing its worker's pass (`PASS_MATES_ATTR`) may
be the one that killed it, or a victim; its copy trains alone (`grid_queue.ALONE_ATTR`), so the
victims complete and only the culprit dies again, using up its own retries. A trial that died
`MAX_RETRY` + 1 times is failed for good, without a copy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import (
    PASS_MATES_ATTR,
    PERMANENT_FAILURE,
    TRIAL_FAILURE_ATTR,
    TRIAL_REASON_ATTR,
    TRIAL_RUN_ID_ATTR,
)
from search.queue import items
from search.storage import optuna_private as private
from search.storage.sessions import MAX_RETRY
from search.study.grid_queue import ALONE_ATTR, queued_params, requeued, retried, study_id_of

COPY_OF_ATTR = "fer_search:copy_of"  # system attr of an asked trial's copy: the old trial's id
WITHDRAWN = "withdrawn: the trial it copied finished after all (its worker was alive)"


def has_lost(study: optuna.Study, storage) -> bool:
    """Whether a trial's heartbeat stopped, or a claimed grid row waits for a trial that never
    came (reads without the lock, before taking it)."""
    if not storage.heartbeat_interval:
        return False
    study_id = study_id_of(study, storage)
    return bool(private.stale_trial_ids(storage, study_id)) or bool(
        retried(storage, items.unlinked, storage.engine, study_id, _grace(storage)))


def recover_lost(study: optuna.Study, storage, on_lost: Callable | None = None) -> list:
    """Fails each trial whose heartbeat stopped and tries it again (see the module's doc).
    Call it under `storage.study_lock`.

    Args:
        on_lost: called with (study, the failed trial, its reason) for each trial failed here.
    """
    if not storage.heartbeat_interval:
        return []
    study_id = study_id_of(study, storage)
    lost = []
    for trial_id in private.stale_trial_ids(storage, study_id):
        frozen = storage.get_trial(trial_id)
        # It shared its pass: the culprit, or a victim. Its copy trains alone. A trial that
        # had not started (a later group of a batch: no MLflow run yet) did not kill anyone:
        # its death is not counted against its retries.
        started = bool(frozen.user_attrs.get(TRIAL_RUN_ID_ATTR))
        row = retried(storage, items.item_of, storage.engine, trial_id)
        params = queued_params(frozen) if row is not None else None
        template = requeued(frozen, params, alone=bool(frozen.user_attrs.get(PASS_MATES_ATTR)),
                            counted=started)
        deaths = len(template["system"]["retry_history"])
        given_up = deaths > MAX_RETRY
        reason = lost_reason(frozen, deaths, given_up=given_up, started=started)
        if row is not None:
            failed = _fail(storage, trial_id, reason, given_up)
            if failed:
                retried(storage, items.requeue, storage.engine, row[0], trial_id,
                        None if given_up else template,
                        bool(template["system"].get(ALONE_ATTR)))
        else:
            failed = add_copy(storage, study_id, frozen, None if given_up else template,
                              functools.partial(_fail, storage, trial_id, reason, given_up))
        if failed:
            lost.append(frozen)
            if on_lost is not None:
                on_lost(study, frozen, reason)
    for item_id in retried(storage, items.unlinked, storage.engine, study_id, _grace(storage)):
        retried(storage, items.release, storage.engine, item_id)
    return lost


def add_copy(storage, study_id: int, old: FrozenTrial, template: dict | None,
             fail: Callable[[], bool]) -> bool:
    """An asked trial's copy queued in Optuna's own queue (none when `template` is None, or
    when a cut-short earlier attempt made it), then `fail` (True: `old` failed now); a copy
    whose old trial finished meanwhile is withdrawn. Call it under the study lock."""
    old_id = private.trial_id(old)
    made = None
    if template is not None and not _has_copy(storage, study_id, old_id):
        made = storage.create_new_trial(study_id, optuna.trial.create_trial(
            state=TrialState.WAITING, params=old.params, distributions=old.distributions,
            system_attrs={**template["system"], COPY_OF_ATTR: old_id},
            user_attrs={**_kept_user_attrs(old), **template["user"]}))
    if fail():
        return True
    if made is not None:
        storage.set_trial_user_attr(made, TRIAL_REASON_ATTR, WITHDRAWN)
        storage.set_trial_state_values(made, TrialState.FAIL)
    return False


def _has_copy(storage, study_id: int, old_id: int) -> bool:
    # Every trial of the study is read: a recovery is rare, and a copy may have been taken
    # (RUNNING) or have finished since a cut-short attempt made it.
    return any(trial.system_attrs.get(COPY_OF_ATTR) == old_id
               for trial in storage.get_all_trials(study_id, deepcopy=False))


def _kept_user_attrs(old: FrozenTrial) -> dict:
    """An asked trial's user attrs its copy keeps (its run, mates and end are its own)."""
    return {k: v for k, v in old.user_attrs.items()
            if k not in (PASS_MATES_ATTR, TRIAL_REASON_ATTR, TRIAL_RUN_ID_ATTR,
                         TRIAL_FAILURE_ATTR)}


def _fail(storage, trial_id: int, reason: str, given_up: bool) -> bool:
    """Fails a lost trial with its reason (and, given up, the permanent mark) through Optuna's
    public storage API; False when it finished meanwhile (its worker was alive after all)."""
    try:
        storage.set_trial_user_attr(trial_id, TRIAL_REASON_ATTR, reason[:1000])
        if given_up:
            storage.set_trial_user_attr(trial_id, TRIAL_FAILURE_ATTR, PERMANENT_FAILURE)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)
    except optuna.exceptions.UpdateFinishedTrialError:
        return False
    return True


def _grace(storage) -> float:
    return storage.grace_period or 2 * (storage.heartbeat_interval or 0)


def lost_reason(trial: FrozenTrial, deaths: int, *, given_up: bool,
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
