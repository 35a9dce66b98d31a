"""Random and TPE studies asked k trials at a time, trained by the trainer in batches
(issue 20).

One trial at a time, every random or TPE trial's head trains alone. Here a worker asks up to
FER_SEARCH_ASK_BATCH trials at once and splits them into batches the trainer may train in one
`trainer.train_many` call, as a grid's claims are (search.study.batches: equal
`trainer.batch_key`, while `trainer.batch_cost` fits).

- The sampler is untouched. Every trial of a batch is asked and its params drawn (`suggest_all`)
  at once, in trial order, before anything trains: a random sampler draws exactly the values it
  would have drawn one trial at a time (its stream is the process's, consumed in the same
  order); a TPE sampler sees the batch's earlier trials RUNNING and lies about them (Optuna's
  constant liar, `make_sampler`), as it does for parallel workers. By default TPE batches only
  its random start-up trials and then asks one at a time (`TPE_STARTUP_TRIALS`): the same
  configurations as one-at-a-time asks, the start-up's trained together.
- `n_trials` exactly: asks happen under the study lock, which every asking worker takes, and
  ask at most `n_trials` minus the trials finished, running or queued (WAITING copies of lost
  trials and a warm start's points, which Optuna's `ask` takes before making a new trial).
- Exactly once: an asked trial is RUNNING with a heartbeat from its creation (the storage beats
  it in the creating transaction), and the loop beats every trial of the batch until it ends. A
  killed worker's trials, started or not, go stale and are failed and re-queued by
  `recovery.recover_lost`, the one re-queue path; their copies (WAITING trials in Optuna's own
  queue) carry the params and are taken by the next ask. A worker that stops mid-batch (a
  signal, the deadline, too many failures) hands its unstarted trials back at once, failed
  and copied by the same path (`hand_back`).
- Pruning acts per trial: a batch's members report every epoch on their own
  (search.trial.runner.TrialRunner.run_many).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import optuna
from optuna.trial import TrialState

from search import settings
from search.contracts import TRIAL_REASON_ATTR
from search.spec.loader import StudySpec
from search.spec.params import suggest_all
from search.storage import optuna_private as private
from search.storage.locks import study_lock
from search.study import grid_queue, recovery
from search.study.batches import Batching

HANDED_BACK = "handed back unstarted: its worker stopped mid-batch (the trial was re-queued)"

# A batch's size when FER_SEARCH_ASK_BATCH is unset. Random: 8, the same configurations and
# values as one at a time, in fewer passes. TPE: 1 once its model draws; in batches of 8 its
# constant liar learned from fewer finished trials and found lower best values, 3 seeds of 3
# (benchmarks/results/tpe_batched-by-8.md). TPE's start-up trials are random draws, asked as a
# random study's are (`TPE_STARTUP_TRIALS`).
DEFAULT_BATCH = {"random": 8, "tpe": 1,
                 # NSGA-II breeds a generation from the last one's elite: the trials of one
                 # generation do not depend on each other, so they may be asked together.
                 "nsga2": 8}

# TPE draws a trial at random while fewer trials than this have finished (Optuna's
# `n_startup_trials`; `make_sampler` passes it). One at a time, those are the first ones asked:
# trials 0 to 9. A TPE batch takes no more of them than one-at-a-time asks would have drawn at
# random and never mixes them with model-drawn ones. So the start-up trials draw exactly the
# values of one-at-a-time asks (the sampler's random stream, consumed in the same order), train
# together, and TPE's first model sees the same finished trials as it would one at a time.
TPE_STARTUP_TRIALS = 10


def ask(study: optuna.Study, storage, spec: StudySpec, limit: int | None) -> list[optuna.Trial]:
    """Asks the next batch, params drawn; [] when the study's `n_trials` are all taken.

    Args:
        limit: at most this many trials (what is left of `--n-trials`); None: no cap.
    """
    with study_lock(storage.url, study.study_name):
        size = room(study, spec, limit)
        trials = []
        for _ in range(size):
            trial = study.ask()  # a queued copy of a lost trial first, else a new one
            suggest_all(trial, spec.space)  # drawn now, in trial order (see the docstring)
            trials.append(trial)
            if _alone(storage, trial):
                # A suspect (it died with its worker in a shared pass) ends the batch: it
                # trains last and alone, so that no trial of the batch waits on its fate.
                break
    return trials


def batch_size(spec: StudySpec, startup: bool = False) -> int:
    """FER_SEARCH_ASK_BATCH, else the sampler's default (`DEFAULT_BATCH`; a random study's for
    TPE's random `startup` trials)."""
    return settings.ask_batch() or DEFAULT_BATCH["random" if startup else spec.sampler]


def room(study: optuna.Study, spec: StudySpec, limit: int | None) -> int:
    """How many trials the next batch may take: at most `batch_size` and `limit`, no more than
    `n_trials` leaves, and for TPE not across the end of its start-up (`TPE_STARTUP_TRIALS`).
    Call it under the study lock."""
    waiting = grid_queue.count(study, TrialState.WAITING)
    taken = grid_queue.count(study, TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    # Failed trials do not count (a failure is replaced, as one-at-a-time asks did); queued
    # copies do, and an ask takes them first.
    startup_left = TPE_STARTUP_TRIALS - taken - waiting if spec.sampler == "tpe" else 0
    size = batch_size(spec, startup=startup_left > 0)
    if startup_left > 0:
        size = min(size, startup_left)
    if limit is not None:
        size = min(size, limit)
    if spec.n_trials is None:
        return max(0, size)
    return max(0, min(size, waiting + max(0, spec.n_trials - taken - waiting)))


def split(spec: StudySpec, trials: Sequence[optuna.Trial], storage,
          batching: Batching | None = None) -> list[list[optuna.Trial]]:
    """The asked trials as batches for the trainer, in the order of each batch's first trial:
    trials of one key while they fit (`Batching`), so that they train as a grid's claims
    would. A trial the trainer cannot batch trains alone, and so does the copy of a trial that
    died with its worker while sharing a pass (`grid_queue.ALONE_ATTR`, read from `storage`)."""
    batching = batching or Batching(spec)
    batches: list[tuple[Hashable, list[optuna.Trial]]] = []
    for trial in trials:
        key = None if _alone(storage, trial) else batching.key(trial.params)
        if key is None:
            batches.append((None, [trial]))
            continue
        for batch_key, members in batches:
            if batch_key == key and batching.fits([t.params for t in [*members, trial]]):
                members.append(trial)
                break
        else:
            batches.append((key, [trial]))
    return [members for _, members in batches]


def _alone(storage, trial: optuna.Trial) -> bool:
    return bool(storage.get_trial(private.trial_id(trial)).system_attrs.get(grid_queue.ALONE_ATTR))


def hand_back(study: optuna.Study, storage, trials: Sequence[optuna.Trial]) -> int:
    """Fails these unstarted trials of this worker's batch and queues a copy of each (params
    kept) in Optuna's queue: the re-queue path of dead workers' trials (search.study.recovery).
    Returns how many. A trial failed meanwhile by another worker's recovery (its copy is
    queued) is skipped."""
    if not trials:
        return 0
    study_id = grid_queue.study_id_of(study, storage)
    handed = 0

    def fail(trial: optuna.Trial) -> bool:
        try:
            storage.set_trial_user_attr(private.trial_id(trial), TRIAL_REASON_ATTR, HANDED_BACK)
            study.tell(trial, state=TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):
            return False  # recovered meanwhile (this worker was cut off): its copy exists
        return True

    with study_lock(storage.url, study.study_name):
        for trial in trials:
            old = storage.get_trial(private.trial_id(trial))
            if old.state.is_finished():
                continue
            # Not an attempt: it never started (no retry counted against it).
            copy = grid_queue.requeued(old, None, counted=False)
            if recovery.add_copy(storage, study_id, old, copy, lambda trial=trial: fail(trial)):
                handed += 1
    return handed
