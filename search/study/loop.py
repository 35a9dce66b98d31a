"""Running a study: create or resume it, claim trials until the budget is spent, record all.

    spec -> Optuna study (SQL storage) -> TrialRunner -> trainer.train -> MLflow runs

The same loop serves `fer-search run` and every `fer-search worker`: any number of processes may
run it against one storage; they coordinate only through the storage.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import PARENT_RUN_ATTR, SPEC_ATTR, SPEC_PATH_ATTR, own_best
from search.errors import FailureBudgetSpent, StudyError
from search.spec.loader import StudySpec
from search.storage import optuna_private as private
from search.storage.counts import queued_in
from search.storage.engines import close_storage
from search.storage.locks import study_lock
from search.storage.sessions import open_storage
from search.study import ask_batch, batches, grid_queue, recovery, signals, warm_start
from search.study.setup import (
    LostRuns,
    close_lost_runs,
    open_study,
    prepare_locked,
    ready_study,
    reopen_parent,
)
from search.tracking.report import refresh_after_run
from search.tracking.runs import Tracker
from search.trial import objectives
from search.trial.data_provider import DataProvider, first_image_size, log_data
from search.trial.runner import Heartbeat, TrialOutcome, TrialRunner

optuna.logging.set_verbosity(optuna.logging.WARNING)

__all__ = [  # the attribute keys stay importable from here for older callers
    "PARENT_RUN_ATTR", "SPEC_ATTR", "SPEC_PATH_ATTR", "RunSummary", "StudyLoop", "open_study",
    "run_study",
]


@dataclass
class RunSummary:
    """What one `run_study` call did."""

    study_name: str
    outcomes: list[TrialOutcome] = field(default_factory=list)
    stopped_because: str = ""
    best: FrozenTrial | None = None
    parent_run_id: str = ""
    warm_start: str = ""  # what this call's warm start did, in one line (search.study.warm_start)

    def count(self, state: TrialState) -> int:
        return sum(1 for o in self.outcomes if o.state == state)


def run_study(
    spec: StudySpec,
    *,
    storage_url: str,
    tracking_uri: str,
    n_trials: int | None = None,
    timeout: float | None = None,
    data: DataProvider | None = None,
    on_trial_end: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    on_start: Callable[[int], None] | None = None,
) -> RunSummary:
    """Runs trials of `spec`'s study until its budget is spent (or `n_trials` / `timeout` of this
    call), failing it after `max_consecutive_failures` failed trials in a row.

    Args:
        n_trials: at most this many trials in this call (default: as many as the study needs).
        timeout: start no trial after this many seconds (default: the spec's timeout).
        on_trial_end: called after each trial (progress display).
        on_start: called with the number of trials this call expects to run.
    """
    deadline = time.monotonic() + (timeout or spec.timeout or float("inf"))
    # Bad data stops here, before the study or any MLflow run exists.
    provider = data or DataProvider(spec, storage_url=storage_url)
    dataset = provider.get(first_image_size(spec))
    lost = LostRuns()
    # Held for this loop's life (retrying through outages), closed in the `finally` below.
    storage = open_storage(storage_url, on_stale=lost, resilient=True)
    tracker = Tracker(tracking_uri)
    experiment_id = tracker.experiment_id(spec.name)
    # A running study's parent run is reopened without the lock; a new one is created under
    # it, so that workers starting together on a new study share one parent run.
    study = ready_study(spec, storage)
    parent_run_id = reopen_parent(tracker, study) if study is not None else None
    warmed: list[str] = []
    if parent_run_id is None:
        study, parent_run_id = prepare_locked(spec, storage, storage_url, lost, tracker,
                                               experiment_id, warmed.append)
    close_lost_runs(tracker, lost)

    summary = RunSummary(spec.name, parent_run_id=parent_run_id, warm_start="".join(warmed))
    runner = TrialRunner(spec, study, storage, provider, tracker, experiment_id, parent_run_id)
    # The budget counts the study's own trials, not those a warm start added.
    budget = warm_start.own_budget(spec, study)
    if on_start is not None:
        on_start(_expected_trials(budget, study, n_trials))
    log_data(tracker, parent_run_id, spec, dataset)

    loop = StudyLoop(budget, study, storage, runner, tracker, lost, n_trials=n_trials,
                     deadline=deadline, on_trial_end=on_trial_end)
    summary.outcomes = loop.outcomes
    status = "FAILED"
    try:
        with signals.stoppable(loop):
            summary.stopped_because = loop.run()
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        if spec.sampler == "grid":  # re-queue the interrupted point for the workers still running
            with study_lock(storage_url, spec.name):
                grid_queue.fill_queue(study, spec)  # settles the claim's rows first
        raise
    finally:
        try:
            summary.best = own_best(study)
            tracker.close_study_run(
                parent_run_id,
                status,
                objectives.best_metrics(spec, summary.best),
            )
            if status == "FINISHED":  # the study run's description and plots (tracking.report)
                refresh_after_run(study, tracker)
        finally:
            close_storage(storage)  # its pooled connections, now rather than at exit
    return summary


class StudyLoop:
    """Claims and runs one process's trials of a study until a budget is spent, the study is
    done, or `request_stop` is called (by a signal handler: `search.study.signals`).

    Failing the study after `max_consecutive_failures` failed trials in a row is the loop's job
    too; a trial taken over by another worker (this one was cut off) does not count.

    Attributes:
        outcomes: the trials this loop ran, in order.
    """

    def __init__(
        self,
        spec: StudySpec,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        runner: TrialRunner,
        tracker: Tracker,
        lost: LostRuns,
        *,
        n_trials: int | None = None,
        deadline: float = float("inf"),
        on_trial_end: Callable[[TrialOutcome, optuna.Study], None] | None = None,
    ) -> None:
        self.spec = spec
        self.study = study
        self.storage = storage
        self.runner = runner
        self.batching = batches.Batching(spec)  # which trials go to the trainer together
        self.tracker = tracker
        self.lost = lost
        self.n_trials = n_trials
        self.deadline = deadline  # time.monotonic() after which no trial starts
        self.on_trial_end = on_trial_end
        self.outcomes: list[TrialOutcome] = []
        self._stop_reason: str | None = None
        self._failures_in_a_row = 0

    def request_stop(self, reason: str = "stop requested") -> None:
        """Starts no further trial; the running one is finished. Safe from a signal handler."""
        if self._stop_reason is None:
            self._stop_reason = reason

    def run(self) -> str:
        """Runs trials until one of the loop's ends; returns why it ended, in words.

        Raises:
            StudyError: too many trials failed in a row (FailureBudgetSpent: in the whole
                study, `max_failed_trials`).
            KeyboardInterrupt: after the interrupted trial was recorded (`TrialRunner.run`).
        """
        while True:
            # Recovered first: a dead worker's trial given up there counts in `_why_stop`'s
            # failure budget before anything more is claimed.
            self._recover_lost_trials()
            reason = self._why_stop()
            if reason is not None:
                return reason
            trials = self._next_trials()
            if not trials:
                if self._others_still_running():
                    time.sleep(2)  # others are finishing the last points; theirs may yet fail
                    continue
                return "study complete"
            self._run_batch(trials)

    def _why_stop(self) -> str | None:
        """Why to claim nothing more (None: go on).

        Raises:
            FailureBudgetSpent: the study's `max_failed_trials` trials failed for good, in
                whichever worker (counted in the storage).
        """
        if self._stop_reason is not None:
            return self._stop_reason
        budget = self.spec.max_failed_trials
        failed = grid_queue.count_failed_for_good(self.study) if budget is not None else 0
        if budget is not None and failed >= budget:
            raise FailureBudgetSpent(
                f"study {self.spec.name!r} stopped: {failed} trials failed for good "
                f"(max_failed_trials: {budget}); `fer-search status {self.spec.name}` lists "
                f"them with their reasons")
        if self.n_trials is not None and len(self.outcomes) >= self.n_trials:
            return f"ran the {self.n_trials} trials asked for"
        if time.monotonic() >= self.deadline:
            return "timeout reached"
        return None

    def _recover_lost_trials(self) -> None:
        """Fails and re-queues dead workers' trials under the study lock (one transaction
        each: `recovery.recover_lost`), and closes their MLflow runs."""
        if recovery.has_lost(self.study, self.storage):
            with study_lock(self.storage.url, self.study.study_name):
                recovery.recover_lost(self.study, self.storage, self.lost)
        close_lost_runs(self.tracker, self.lost)

    def _next_trials(self) -> list[optuna.Trial]:
        """Claims the next trials (a grid's batch, or a batch of asks); [] when none is left."""
        left = None if self.n_trials is None else self.n_trials - len(self.outcomes)
        if self.spec.sampler == "grid":
            return batches.claim(self.study, self.storage, self.batching, left)
        return ask_batch.ask(self.study, self.storage, self.spec, left)

    def _run_batch(self, trials: list[optuna.Trial]) -> None:
        """Runs and records claimed trials: a grid's claim is one batch for the trainer; asked
        trials are split into such batches (search.study.ask_batch.split), run in turn, all
        trials beating; a stop between batches (signal, deadline) or an error hands the
        unstarted ones back."""
        if self.spec.sampler == "grid":
            try:
                for outcome in self.runner.run_many(trials):
                    self._record(outcome)
            finally:  # the points' queue rows: done, or interrupted (re-queued by a fill)
                grid_queue.settle(self.study, trials)
            return
        groups = ask_batch.split(self.spec, trials, self.storage, self.batching)
        started = 0
        try:
            with Heartbeat(self.storage, [private.trial_id(trial) for trial in trials]):
                for group in groups:
                    if started and (self._stop_reason or time.monotonic() >= self.deadline):
                        return  # a signal or the deadline: start no further group
                    started += 1
                    for outcome in self.runner.run_many(group):
                        self._record(outcome)
        finally:
            ask_batch.hand_back(self.study, self.storage,
                                [trial for group in groups[started:] for trial in group])

    def _others_still_running(self) -> bool:
        # Another worker's trials may yet fail, go stale or be handed back (random and TPE
        # batches too): this worker then runs their copies, or new asks in their place.
        return grid_queue.count(self.study, TrialState.RUNNING) > 0

    def _record(self, outcome: TrialOutcome) -> None:
        self.outcomes.append(outcome)
        if self.on_trial_end is not None:
            self.on_trial_end(outcome, self.study)
        if not outcome.taken_over:
            failed = outcome.state == TrialState.FAIL
            self._failures_in_a_row = self._failures_in_a_row + 1 if failed else 0
        if self._failures_in_a_row >= self.spec.max_consecutive_failures:
            raise StudyError(
                f"{self._failures_in_a_row} trials failed in a row (max_consecutive_failures="
                f"{self.spec.max_consecutive_failures}); the last one: {outcome.reason}"
            )


def _expected_trials(spec: StudySpec, study: optuna.Study, n_trials: int | None) -> int:
    if spec.sampler == "grid":
        left = queued_in(study)
    elif spec.n_trials is not None:
        left = spec.n_trials - grid_queue.count(study, TrialState.COMPLETE, TrialState.PRUNED)
    else:
        left = n_trials or 0
    return max(0, min(left, n_trials) if n_trials is not None else left)
