"""Setting a study up, for `search.study.loop` (every `run` and `worker`): its sampler and
pruner, the Optuna study created or loaded and checked against the spec, its queue prepared under
the study lock (dead workers' trials failed and re-queued, a pending warm start, a grid's points),
the parent MLflow run opened, and the MLflow runs of the dead workers' trials closed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from search.contracts import (
    METRIC_ATTR,
    MODEL_NAME_ATTR,
    PARENT_RUN_ATTR,
    SAMPLER_ATTR,
    SPEC_ATTR,
    SPEC_PATH_ATTR,
)
from search.queue import items
from search.spec.loader import StudySpec
from search.storage.locks import study_lock
from search.study import ask_batch, batches, grid_queue, recovery, warm_start
from search.tracking.runs import Tracker
from search.trial import objectives
from search.urls import mask_url


def make_sampler(spec: StudySpec) -> optuna.samplers.BaseSampler:
    # A grid's points come from the queue (grid_queue); its sampler never picks a value.
    if spec.sampler == "tpe":
        # The constant liar (Optuna's advice for parallel TPE): trials asked but unfinished
        # (others', or this batch's: search.study.ask_batch) count as bad, so a batch spreads.
        return optuna.samplers.TPESampler(seed=spec.seed, constant_liar=True,
                                          n_startup_trials=ask_batch.TPE_STARTUP_TRIALS)
    if spec.sampler == "nsga2":  # generations of 50 (Optuna's default), the first one random
        return optuna.samplers.NSGAIISampler(seed=spec.seed)
    return optuna.samplers.RandomSampler(seed=spec.seed)


def make_pruner(spec: StudySpec) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


@dataclass(frozen=True)
class LostTrial:
    """A dead worker's trial, failed by `recovery.recover_lost`, and why."""

    study_name: str
    number: int
    reason: str


class LostRuns:
    """Called for each dead worker's trial that `recovery.recover_lost` failed (and re-queued
    in the same transaction): remembers it, for `close_lost_runs` to close its MLflow run,
    which the dead worker could not."""

    def __init__(self) -> None:
        self.trials: list[LostTrial] = []

    def __call__(self, study: optuna.Study, trial: FrozenTrial, reason: str | None = None) -> None:
        self.trials.append(LostTrial(study.study_name, trial.number,
                                     reason or "worker lost: no heartbeat"))


def open_study(spec: StudySpec, storage, storage_url: str) -> optuna.Study:
    """Creates the study or loads it, and checks it is the same kind of study as the spec."""
    study = optuna.create_study(
        study_name=spec.name,
        storage=storage,
        sampler=make_sampler(spec),
        pruner=make_pruner(spec),
        directions=objectives.directions(spec),  # one per objective (search.trial.objectives)
        load_if_exists=True,
    )
    objectives.check_directions(study, spec, storage_url)
    if SPEC_ATTR not in study.user_attrs:
        # A new study: queue rows under its id are a deleted study's (SQLite reuses ids).
        grid_queue.retried(storage, items.drop_study,
            storage.engine, grid_queue.study_id_of(study, storage))
        objectives.record(study, spec)
        study.set_user_attr(SPEC_ATTR, spec.redacted_text)
        study.set_user_attr(SPEC_PATH_ATTR, str(spec.path))
        study.set_user_attr(METRIC_ATTR, spec.metric)
        study.set_user_attr(SAMPLER_ATTR, spec.sampler)
        study.set_user_attr(MODEL_NAME_ATTR, spec.model_name)
        # optuna-dashboard's note (report and spec) is written when a run ends
        # (`refresh_after_run`), not here: importing the dashboard costs ~1 s of start-up.
    return study


def prepare_queue(spec: StudySpec, storage, storage_url: str, on_lost=None,
                  on_warm_start: Callable[[str], None] | None = None) -> optuna.Study:
    """Creates or loads the study, fails and re-queues dead workers' trials, does a pending warm
    start (search.study.warm_start: the earlier study read before this one is created) and
    fills a grid's queue. Call it under `study_lock`.

    Args:
        on_warm_start: called with the warm start's line, when this call did it.
    """
    source = warm_start.read_source(spec, storage, storage_url)
    study = open_study(spec, storage, storage_url)
    recovery.recover_lost(study, storage, on_lost)
    seeded = warm_start.seed(study, spec, source)
    if spec.sampler == "grid":
        grid_queue.fill_queue(study, spec, batches.Batching(spec).key,
                              first=seeded.first if seeded else ())
    warm_start.finish(study, seeded)
    if seeded is not None and on_warm_start is not None:
        on_warm_start(seeded.line)
    return study


def ready_study(spec: StudySpec, storage) -> optuna.Study | None:
    """The study, when a worker can start on it without the study lock (so that many workers
    joining a running study do not queue on it): it exists and is the spec's, no dead worker's
    trial waits to be failed, a grid's queue is full. Else None: lock, `prepare_queue`."""
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage,
                                  sampler=make_sampler(spec), pruner=make_pruner(spec))
    except KeyError:  # no such study yet
        return None
    if not objectives.same_directions(study, spec) or SPEC_ATTR not in study.user_attrs:
        return None  # the locked path says what is wrong, or finishes the set-up
    if recovery.has_lost(study, storage) or warm_start.pending(spec, storage):
        return None
    if spec.sampler == "grid" and not grid_queue.queue_full(study, spec):
        return None
    return study


def prepare_locked(spec: StudySpec, storage, storage_url: str, lost: LostRuns,
                    tracker: Tracker, experiment_id: str,
                    on_warm_start: Callable[[str], None]) -> tuple[optuna.Study, str]:
    """Under the study lock: `prepare_queue`, and the parent run opened or created."""
    with study_lock(storage_url, spec.name):
        study = prepare_queue(spec, storage, storage_url, lost, on_warm_start)
        parent_run_id = tracker.open_study_run(
            experiment_id,
            study.user_attrs.get(PARENT_RUN_ATTR),
            spec.name,
            params={
                "sampler": spec.sampler,
                "metric": spec.metric,
                "direction": spec.direction,
                "pruner": spec.pruner,
                "storage": mask_url(storage_url),
                "searched": ",".join(spec.param_names),
                "grid_size": _grid_size(spec),
                **objectives.run_params(spec),
            },
            spec_text=spec.redacted_text,
        )
        if study.user_attrs.get(PARENT_RUN_ATTR) != parent_run_id:
            study.set_user_attr(PARENT_RUN_ATTR, parent_run_id)
    return study, parent_run_id


def reopen_parent(tracker: Tracker, study: optuna.Study) -> str | None:
    """The study's parent run, marked RUNNING again; None when it has none (or it is gone):
    then the locked path creates one."""
    run_id = study.user_attrs.get(PARENT_RUN_ATTR)
    if not run_id:
        return None
    try:
        tracker.client.get_run(run_id)
        tracker.client.update_run(run_id, status="RUNNING")
    except Exception:  # deleted in the UI
        return None
    return run_id


def _grid_size(spec: StudySpec) -> int | str:
    return len(grid_queue.grid_points(spec)) if spec.sampler == "grid" else "n/a"


def close_lost_runs(tracker: Tracker, lost: LostRuns) -> None:
    """Closes the lost trials' MLflow runs FAILED with their reasons: the run a trial recorded,
    and any run of that trial still RUNNING whose id never reached the trial (its worker died
    between creating the run and recording it), found by its tags."""
    while lost.trials:
        trial = lost.trials.pop()
        try:
            for run_id in _running_runs(tracker, trial):
                tracker.end_run(run_id, "FAILED", trial.reason)
        except Exception:  # the runs or the experiment are gone; nothing to close
            pass


def _running_runs(tracker: Tracker, trial: LostTrial) -> list[str]:
    found = tracker.client.get_experiment_by_name(trial.study_name)
    if found is None:
        return []
    runs = tracker.client.search_runs(
        [found.experiment_id],
        filter_string=(f"tags.`optuna.study_name` = '{trial.study_name}' and "
                       f"tags.`optuna.trial_number` = '{trial.number}' and "
                       f"attributes.status = 'RUNNING'"))
    return [run.info.run_id for run in runs]
