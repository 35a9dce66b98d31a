"""One trial, start to finish: params -> TrainConfig -> train -> Optuna + MLflow.

A trial ends in exactly one of three ways, the same in both systems: COMPLETE/FINISHED,
PRUNED/KILLED, FAIL/FAILED (with the reason). Bad input found while training (a dataset or
weights file that cannot be used) is fatal: it fails the trial and stops the study, since every
other trial would fail the same way.

A claimed trial becomes a `TrialSession`: its MLflow run, its per-epoch reports (pruning), its
deadline (search.trial.deadline) and how it ended. `TrialRunner.run_many` hands the configs
to `trainer.train` (one) or `trainer.train_many` (a batch: search.study.batches), beating them
all from one thread, the pass-mates written first (suspects if the worker dies). Each session
is concluded on its own (its tell, its run's status), as soon as the trainer says it is done.

Resume: a trial that carries on a failed one (re-queued by heartbeat: Optuna's system attr
`retry_history`; re-queued by the grid queue after an interruption: user attr `failed_trial`)
tags its MLflow run `resumed_from_run`. The trainer finds the failed trial's checkpoint itself
(same config, same data) and replays the finished epochs through the epoch callback before
training the rest, so the new trial's Optuna reports and its run hold every epoch once; its run
then says from which epoch it resumed (`resumed_from_epoch`).
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

import trainer
from search import settings
from search.contracts import (
    FAILED_TRIAL_ATTR,
    PASS_MATES_ATTR,
    PERMANENT_FAILURE,
    RESUMED_BY_RUN_TAG,
    RESUMED_FROM_EPOCH,
    RESUMED_FROM_RUN,
    TRIAL_FAILURE_ATTR,
    TRIAL_REASON_ATTR,
    TRIAL_RUN_ID_ATTR,
)
from search.spec.loader import StudySpec
from search.spec.params import suggest_all
from search.storage import optuna_private as private
from search.tracking.runs import Tracker, trial_tags
from search.trial import repeats
from search.trial.data_provider import DataProvider
from search.trial.deadline import Deadline, TrialTimedOut, Watchdog
from search.trial.objectives import TrialGoals

FATAL = repeats.FATAL_KINDS  # bad input: fails the trial and stops the study


@dataclass
class TrialOutcome:
    number: int
    state: TrialState
    value: float | None
    reason: str | None = None
    taken_over: bool = False  # failed by heartbeat while this worker was cut off: not its fault


class TrialRunner:
    """Runs claimed trials of one study in this process."""

    def __init__(
        self,
        spec: StudySpec,
        study: optuna.Study,
        storage: optuna.storages.BaseStorage,
        data: DataProvider,
        tracker: Tracker,
        experiment_id: str,
        parent_run_id: str,
    ) -> None:
        self.spec = spec
        self.study = study
        self.storage = storage
        self.data = data
        self.tracker = tracker
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._study_id = storage.get_study_id_from_name(study.study_name)
        self.most_epochs = most_epochs(spec)
        # A pruner reads each epoch's value when it comes; without one they are written in
        # bunches (`TrialSession._report`).
        self.prunes = not isinstance(study.pruner, optuna.pruners.NopPruner)
        self._run_ids: dict[int, str] = {}
        # The spec's top-level `trial_timeout` (seconds, None: no deadline).
        self.trial_timeout: float | None = getattr(spec, "trial_timeout", None)
        self.watchdog = Watchdog()

    def run(self, trial: optuna.Trial) -> TrialOutcome:
        """Runs `trial` alone and tells both Optuna and MLflow how it ended.

        Raises:
            trainer.TrainerError (fatal kinds), KeyboardInterrupt: after recording the trial.
        """
        return self.run_many([trial])[0]

    def run_many(self, trials: Sequence[optuna.Trial]) -> list[TrialOutcome]:
        """Runs claimed `trials` (one batch: search.study.batches) in one call to the trainer
        and concludes each; one outcome each, in order.

        Raises:
            trainer.TrainerError (fatal kinds), KeyboardInterrupt: after recording every trial.
        """
        outcomes: dict[int, TrialOutcome] = {}
        results: list = []
        # Beat from the claim on: a slow MLflow call must not make a live trial look dead.
        with Heartbeat(self.storage, [self._trial_id(trial) for trial in trials]):
            if len(trials) > 1:  # suspects, should this worker die: recovery.recover_lost
                for trial in trials:
                    with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                        trial.set_user_attr(PASS_MATES_ATTR,
                                            [t.number for t in trials if t is not trial])
            sessions: list[TrialSession] = []
            for trial in trials:
                try:
                    sessions.append(TrialSession(self, trial))
                except optuna.exceptions.UpdateFinishedTrialError:
                    outcomes[trial.number] = self._taken_over(trial)
            try:
                with self.watchdog.watching(sessions):
                    results = self._train(sessions) if sessions else []
            except (KeyboardInterrupt, SystemExit) as stop:  # the whole pass stops
                for session in sessions:
                    session.conclude(stop)
                raise
            except Exception as error:  # the pass itself failed (out of memory ...): all of it
                results = [error] * len(sessions)
            for session, result in zip(sessions, results, strict=True):
                outcomes[session.number] = session.conclude(result)
        fatal = next((r for r in results if isinstance(r, FATAL)), None)
        if fatal is not None:
            raise fatal
        return [outcomes[trial.number] for trial in trials]

    def _train(self, sessions: Sequence[TrialSession]) -> list:
        """The trainer's entry (TrainResult, `repeats.Repeated` or exception) per session (one
        key: one dataset); several sessions, or a session's seeds, in one `train_many`."""
        if len(sessions) == 1 and sessions[0].gather.repeats == 1:
            (session,) = sessions
            try:
                data = self.data.get(session.config.image_size)
                return [trainer.train(session.config, data, on_epoch_end=session.on_epoch_end,
                                      share_epochs_to=self.most_epochs)]
            except Exception as error:  # concluded by the session, like a batch member's
                return [error]

        data = self.data.get(sessions[0].config.image_size)
        return repeats.train_together(sessions, data, self.most_epochs)

    def resumed_run(self, trial: optuna.Trial) -> str | None:
        """The MLflow run of the failed trial that `trial` carries on, if it is a retry."""
        frozen = self.storage.get_trial(self._trial_id(trial))
        retries = frozen.system_attrs.get("retry_history") or []
        number = retries[-1] if retries else frozen.user_attrs.get(FAILED_TRIAL_ATTR)
        if number is None:
            return None
        previous = self.storage.get_trial(
            self.storage.get_trial_id_from_study_id_trial_number(self._study_id, int(number)))
        return previous.user_attrs.get(TRIAL_RUN_ID_ATTR)

    def _taken_over(self, trial: optuna.Trial) -> TrialOutcome:
        """This worker lost touch for longer than the grace period; the trial was failed by
        heartbeat and re-queued for another worker. Close our run; it is not our failure."""
        reason = "taken over after a heartbeat timeout (the trial was re-queued)"
        run_id = self._run_ids.pop(trial.number, None)
        if run_id is not None:
            self.tracker.end_run(run_id, "FAILED", reason)
        return TrialOutcome(trial.number, TrialState.FAIL, None, reason, taken_over=True)

    def _trial_id(self, trial: optuna.Trial) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self._study_id, trial.number)


class TrialSession:
    """One claimed trial in flight: its config, MLflow run, per-epoch history and deadline."""

    def __init__(self, runner: TrialRunner, trial: optuna.Trial) -> None:
        self.runner = runner
        self.trial = trial
        self.number = trial.number
        self.deadline = Deadline(runner.trial_timeout)
        self.start = time.perf_counter()
        spec, tracker = runner.spec, runner.tracker
        self.params = suggest_all(trial, spec.space)
        self.config = spec.train_config(self.params)
        # The configs it trains: its own, or one per seed with `repeats: N` (search.trial.repeats)
        self.gather = repeats.Gather(
            repeats.seed_configs(self.config, getattr(spec, "repeats", 1)), spec.metric)
        self.resumes = runner.resumed_run(trial)
        tags = {"searched": ",".join(spec.param_names)}
        if self.resumes:
            tags[RESUMED_FROM_RUN] = self.resumes
        self.run_id = tracker.start_trial_run(
            runner.experiment_id, runner.parent_run_id, spec.name, trial.number,
            params=self.config.to_dict(), tags=tags,
        )
        runner._run_ids[trial.number] = self.run_id
        trial.set_user_attr(TRIAL_RUN_ID_ATTR, self.run_id)
        self.goals = TrialGoals(runner, trial, self.config, self.run_id)  # costs, before training
        if self.resumes:
            trial.set_user_attr(RESUMED_FROM_RUN, self.resumes)
            try:  # a pointer forward from the dead run, for whoever opens it in the UI
                tracker.client.set_tag(self.resumes, RESUMED_BY_RUN_TAG, self.run_id)
            except Exception:  # the old run was deleted: nothing to point from
                pass
        self.history: list[dict[str, float]] = []
        self._unreported: dict[int, float] = {}  # epoch -> value, not yet in the study
        self._reported_at = time.monotonic()
        self._lock = threading.Lock()  # conclude (main thread) vs fail_stuck (watchdog)
        self._outcome: TrialOutcome | None = None

    # ------------------------------------------------------------------------------ training

    def on_epoch_end(self, epoch: int, metrics: dict[str, float]) -> None:
        """The trainer's callback: report, maybe prune, check the deadline. Restored epochs of a
        resumed training come through here too, first and in order."""
        self.history.append(metrics)
        self._unreported[epoch] = float(metrics[self.runner.spec.metric])
        if self.runner.prunes or time.monotonic() - self._reported_at >= settings.report_s():
            self._report()
        if self.runner.prunes and self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        self.deadline.check()

    def _report(self) -> None:
        """Writes the epochs' values not yet in the study: each at once when a pruner reads
        them; else together, every FER_SEARCH_REPORT_S and at the trial's end, in one
        transaction where the storage can (a worker killed meanwhile loses only values its
        trial's retry reports again)."""
        if not self._unreported or self.runner.spec.multi_objective:  # Optuna takes none
            return
        values, self._unreported = self._unreported, {}
        self._reported_at = time.monotonic()
        write_all = getattr(self.runner.storage, "set_trial_intermediate_values", None)
        if write_all is not None and len(values) > 1:
            write_all(private.trial_id(self.trial), values)
            return
        for epoch, value in values.items():
            self.trial.report(value, epoch)

    # ------------------------------------------------------------------------------ the end

    def conclude(self, result) -> TrialOutcome:
        """Tells Optuna and MLflow how the trial ended: `result` is its TrainResult or the
        exception that stopped it. Once: a trial the watchdog recorded keeps that record."""
        with self._lock:
            if self._outcome is None:
                try:
                    if isinstance(result := self.goals.checked(result), BaseException):
                        self._outcome = self._failed(result)
                    else:
                        self._outcome = self._complete(result)
                except optuna.exceptions.UpdateFinishedTrialError:
                    self._outcome = self.runner._taken_over(self.trial)
            return self._outcome

    def fail_stuck(self) -> None:
        """From the watchdog's thread: the trial is stuck inside an epoch past its deadline."""
        with self._lock:
            if self._outcome is not None:
                return
            self.trial.set_user_attr(TRIAL_FAILURE_ATTR, PERMANENT_FAILURE)
            self.runner.tracker.client.set_tag(
                self.run_id, "timeout", "stuck inside an epoch: the worker exited to be restarted")
            self._outcome = self._finish(TrialState.FAIL, self.deadline.reason)

    def _failed(self, error: BaseException) -> TrialOutcome:
        error, seed = repeats.cause(error)  # one seed's failure: its own error, the seed named
        if isinstance(error, optuna.exceptions.UpdateFinishedTrialError):
            raise error  # another worker owns the trial now
        if isinstance(error, optuna.TrialPruned):
            return self._finish(TrialState.PRUNED, seed + str(error))
        if isinstance(error, TrialTimedOut | trainer.TrainingDiverged | trainer.HeadFailed):
            # Its own merits (a head that raised was trained alone to tell): running it again
            # would end the same way.
            self.trial.set_user_attr(TRIAL_FAILURE_ATTR, PERMANENT_FAILURE)
            return self._finish(TrialState.FAIL, seed + str(error))
        if isinstance(error, FATAL):
            return self._finish(TrialState.FAIL, seed + str(error))
        if isinstance(error, KeyboardInterrupt | SystemExit):
            return self._finish(TrialState.FAIL, "interrupted", mlflow_status="KILLED")
        # Any other error of this trial's training (a driver error): this trial only, for good.
        self.trial.set_user_attr(TRIAL_FAILURE_ATTR, PERMANENT_FAILURE)
        self.runner.tracker.client.set_tag(
            self.run_id, "traceback", "".join(traceback.format_exception(error))[-4000:])
        return self._finish(TrialState.FAIL, f"{seed}{type(error).__name__}: {error}")

    def _complete(self, result) -> TrialOutcome:
        runner, trial, run_id = self.runner, self.trial, self.run_id
        self._report()  # the epochs' values before the tell, which ends the trial
        if isinstance(result, repeats.Repeated):  # the seeds' spread, then their mean's record
            repeats.record(trial, runner.tracker, run_id, runner.spec.metric, result)
            result = result.combined
        value = self.goals.value(result.metrics)  # constraints set; a value per objective
        per_class = result.val_evaluation.per_class
        summary = {
            **{f"val_f1_{name}": row["f1"] for name, row in per_class.items()},
            **{f"val_recall_{name}": row["recall"] for name, row in per_class.items()},
        }
        if result.best_epoch != result.epochs_run:
            # Early stopping kept an earlier epoch: its values become the run's latest ones.
            summary.update(result.metrics)
        # Bookkeeping goes into tags, out of the learning-curve charts (search.tracking.runs).
        tags = trial_tags(result, time.perf_counter() - self.start, runner.spec.metric,
                          self.params)
        resumed = int(getattr(result, "resumed_from_epoch", 0) or 0)
        if resumed or self.resumes:
            tags[RESUMED_FROM_EPOCH] = str(resumed)
            trial.set_user_attr(RESUMED_FROM_EPOCH, resumed)
        runner.tracker.log(run_id, metrics=summary, history=result.history,
                           step=result.epochs_run, tags=tags)
        runner.tracker.log_dataset(run_id, runner.data.get(self.config.image_size),
                                   str(runner.spec.data_config().root), "training")
        runner.tracker.log_evaluation(run_id, result.val_evaluation, "val")
        runner.tracker.log_top_weights(run_id, result.top_weights)
        if runner.study.tell(trial, value, skip_if_finished=True).state != TrialState.COMPLETE:
            raise optuna.exceptions.UpdateFinishedTrialError("failed meanwhile by heartbeat")
        runner.tracker.end_run(run_id, "FINISHED")
        return TrialOutcome(trial.number, TrialState.COMPLETE, value)

    def _finish(self, state: TrialState, reason: str,
                mlflow_status: str | None = None) -> TrialOutcome:
        runner = self.runner
        self._report()
        self.trial.set_user_attr(TRIAL_REASON_ATTR, reason[:1000])
        runner.tracker.log(self.run_id, history=list(self.history),
                           tags={"duration_s": f"{time.perf_counter() - self.start:.3f}"})
        runner.study.tell(self.trial, state=state, skip_if_finished=True)
        status = mlflow_status or ("KILLED" if state == TrialState.PRUNED else "FAILED")
        runner.tracker.end_run(self.run_id, status, reason)
        return TrialOutcome(self.trial.number, state, None, reason)


def most_epochs(spec: StudySpec) -> int | None:
    """In a grid, the largest `epochs` on the axis: the trainer trains a config that far once
    and answers the grid's other trials of that config (differing only in `epochs`) from its
    record (the trainer's `share_epochs_to`). Random and TPE trials rarely differ only in
    `epochs`, so training ahead for them would only waste epochs."""
    if spec.sampler != "grid":
        return None
    return max(spec.grid.get("epochs", [0])) or None


class Heartbeat:
    """Records the heartbeat of the trials this worker runs, every interval while they run
    (Optuna's `optimize` does this for its own trials; claimed trials need it too, or a live
    worker would look dead). One thread beats all of a batch's trials.

    A beat is never retried (a missed one is harmless: the next comes an interval later), and
    the trial's end waits at most JOIN_S for a beat in flight: a trial ending during a database
    outage finishes as soon as its own calls get through, not after a beat's retries."""

    JOIN_S = 2.0

    def __init__(self, storage, trial_ids: int | Sequence[int]) -> None:
        self._storage = storage
        self._trial_ids = [trial_ids] if isinstance(trial_ids, int) else list(trial_ids)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # ResilientRDBStorage's unretried beat; any other storage's own.
        self._record = getattr(storage, "record_heartbeat_once", storage.record_heartbeat)

    def __enter__(self) -> Heartbeat:
        interval = self._storage.get_heartbeat_interval()
        if interval:
            for trial_id in self._trial_ids:
                self._storage.record_heartbeat(trial_id)
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            for trial_id in self._trial_ids:
                try:
                    self._record(trial_id)
                except Exception:  # a database blip: the next beat tries again
                    pass
        with contextlib.suppress(Exception):  # this thread's pooled session, back to the pool
            self._storage.remove_session()

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            # A beat stuck on a dead connection ends by itself (daemon thread; a stale beat
            # after the trial's end is harmless).
            self._thread.join(timeout=self.JOIN_S)


_Heartbeat = Heartbeat  # the name tests know it by
