"""One trial, start to finish: params -> TrainConfig -> train -> Optuna + MLflow.

A trial ends in exactly one of three ways, the same in both systems: COMPLETE/FINISHED,
PRUNED/KILLED, FAIL/FAILED (with the reason). Bad input found while training (a dataset or
weights file that cannot be used) is fatal: it fails the trial and stops the study, since every
other trial would fail the same way.
"""

from __future__ import annotations

import threading
import time
import traceback
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

import trainer
from search.data import DataProvider
from search.grid_queue import PERMANENT_FAILURE
from search.space import suggest_all
from search.spec import StudySpec
from search.tracking import Tracker, trial_tags

FATAL = (trainer.DataError, trainer.WeightsError, trainer.ConfigError)


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
        self._most_epochs = most_epochs(spec)
        self._run_ids: dict[int, str] = {}

    def run(self, trial: optuna.Trial) -> TrialOutcome:
        """Runs `trial` and tells both Optuna and MLflow how it ended.

        Raises:
            trainer.TrainerError (fatal kinds), KeyboardInterrupt: after recording the trial.
        """
        # Beat from the claim on: a slow MLflow call must not make a live trial look dead.
        with _Heartbeat(self.storage, self._trial_id(trial)):
            try:
                return self._run(trial, time.perf_counter())
            except optuna.exceptions.UpdateFinishedTrialError:
                return self._taken_over(trial)

    def _run(self, trial: optuna.Trial, start: float) -> TrialOutcome:
        params = suggest_all(trial, self.spec.space)
        config = self.spec.train_config(params)
        run_id = self.tracker.start_trial_run(
            self.experiment_id,
            self.parent_run_id,
            self.spec.name,
            trial.number,
            params=config.to_dict(),
            tags={"searched": ",".join(self.spec.param_names)},
        )
        self._run_ids[trial.number] = run_id
        trial.set_user_attr("mlflow_run_id", run_id)
        history: list[dict[str, float]] = []

        def on_epoch_end(epoch: int, metrics: dict[str, float]) -> None:
            history.append(metrics)
            trial.report(metrics[self.spec.metric], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            data = self.data.get(config.image_size)
            result = trainer.train(config, data, on_epoch_end=on_epoch_end,
                                   share_epochs_to=self._most_epochs)
        except optuna.TrialPruned as pruned:
            return self._finish(trial, run_id, history, TrialState.PRUNED, start, str(pruned))
        except trainer.TrainingDiverged as diverged:
            trial.set_user_attr("failure", PERMANENT_FAILURE)
            return self._finish(trial, run_id, history, TrialState.FAIL, start, str(diverged))
        except optuna.exceptions.UpdateFinishedTrialError:
            raise  # another worker owns the trial now: see run()
        except FATAL as fatal:
            self._finish(trial, run_id, history, TrialState.FAIL, start, str(fatal))
            raise
        except (KeyboardInterrupt, SystemExit):
            self._finish(trial, run_id, history, TrialState.FAIL, start, "interrupted",
                         mlflow_status="KILLED")
            raise
        except Exception as error:  # out of memory, a driver error: this trial only
            reason = f"{type(error).__name__}: {error}"
            self.tracker.client.set_tag(run_id, "traceback", traceback.format_exc()[-4000:])
            return self._finish(trial, run_id, history, TrialState.FAIL, start, reason)

        value = result.metrics[self.spec.metric]
        per_class = result.val_evaluation.per_class
        summary = {
            **{f"val_f1_{name}": row["f1"] for name, row in per_class.items()},
            **{f"val_recall_{name}": row["recall"] for name, row in per_class.items()},
        }
        if result.best_epoch != result.epochs_run:
            # Early stopping kept an earlier epoch: its values become the run's latest ones.
            summary.update(result.metrics)
        tags = trial_tags(result, time.perf_counter() - start, self.spec.metric, params)
        self.tracker.log(run_id, metrics=summary, history=result.history, step=result.epochs_run,
                         tags=tags)
        self.tracker.log_dataset(run_id, data, str(self.spec.data_config().root), "training")
        self.tracker.log_evaluation(run_id, result.val_evaluation, "val")
        self.tracker.log_top_weights(run_id, result.top_weights)
        if self.study.tell(trial, value, skip_if_finished=True).state != TrialState.COMPLETE:
            raise optuna.exceptions.UpdateFinishedTrialError("failed meanwhile by heartbeat")
        self.tracker.end_run(run_id, "FINISHED")
        return TrialOutcome(trial.number, TrialState.COMPLETE, value)

    def _finish(
        self,
        trial: optuna.Trial,
        run_id: str,
        history: list[dict[str, float]],
        state: TrialState,
        start: float,
        reason: str,
        mlflow_status: str | None = None,
    ) -> TrialOutcome:
        trial.set_user_attr("reason", reason[:1000])
        self.tracker.log(run_id, history=history,
                         tags={"duration_s": f"{time.perf_counter() - start:.3f}"})
        self.study.tell(trial, state=state, skip_if_finished=True)
        status = mlflow_status or ("KILLED" if state == TrialState.PRUNED else "FAILED")
        self.tracker.end_run(run_id, status, reason)
        return TrialOutcome(trial.number, state, None, reason)

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


def most_epochs(spec: StudySpec) -> int | None:
    """In a grid, the largest `epochs` on the axis: a group's first training runs that far once,
    and the group's other trials (differing only in `epochs`) are answered from its record
    (trainer.epoch_record). Random and TPE trials rarely share a group, so training ahead for
    them would only waste epochs."""
    if spec.sampler != "grid":
        return None
    return max(spec.grid.get("epochs", [0])) or None


class _Heartbeat:
    """Records the trial's heartbeat every interval while it runs (Optuna's `optimize` does this
    for its own trials; claimed trials need it too, or a live worker would look dead)."""

    def __init__(self, storage, trial_id: int) -> None:
        self._storage = storage
        self._trial_id = trial_id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> _Heartbeat:
        interval = self._storage.get_heartbeat_interval()
        if interval:
            self._storage.record_heartbeat(self._trial_id)
            self._thread = threading.Thread(target=self._beat, args=(interval,), daemon=True)
            self._thread.start()
        return self

    def _beat(self, interval: float) -> None:
        while not self._stop.wait(interval):
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # a database blip: the next beat retries
                pass

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
