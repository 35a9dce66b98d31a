"""A worker whose training is a sleep: the real study set-up, recovery, claim, heartbeat,
per-epoch report and tell of search.study (`prepare_queue`, `StudyLoop`, `TrialRunner`), with
no TensorFlow, no dataset and no MLflow. It starts in a fraction of a second, so many of them
can hammer one storage: the exactly-once stress test (tests/search/test_exactly_once.py) runs
it, and so can a benchmark of the queue. Never for a real study: its trials' values are made
up.

    python -m search.study.dry_worker SPEC [--epoch-s 0.1] [--n-trials N]

The storage URL comes from $FER_SEARCH_STORAGE (never the command line, which `ps` shows).
Each training pass prints `dry worker PID trains [numbers]` before its first epoch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

from search.spec.loader import load_spec
from search.storage.engines import close_storage
from search.storage.locks import study_lock
from search.storage.sessions import open_storage, resolve_storage
from search.study.loop import StudyLoop
from search.study.setup import LostRuns, prepare_queue, ready_study
from search.trial.runner import TrialRunner, TrialSession

DRY_VALUE = 0.5  # every trial's metric


class _NullClient:
    def set_tag(self, *args, **kwargs) -> None:
        pass

    def get_run(self, run_id: str):
        raise KeyError(run_id)  # `_close_lost_runs`: nothing to close


class NullTracker:
    """MLflow, left out: every call is accepted and does nothing."""

    client = _NullClient()

    def start_trial_run(self, experiment_id, parent_run_id, study_name, number, **kwargs) -> str:
        return f"dry-{number}"

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None


class NullData:
    """No dataset: the sleep trains on nothing."""

    def get(self, image_size: int) -> None:
        return None


@dataclass
class DryResult:
    """What `TrialSession._complete` reads of a trainer's TrainResult."""

    metrics: dict[str, float]
    epochs_run: int
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    epochs_trained: int = 0
    feature_seconds: float = 0.0
    top_weights: None = None
    val_evaluation: SimpleNamespace = field(
        default_factory=lambda: SimpleNamespace(per_class={}))

    def __post_init__(self) -> None:
        self.best_epoch = self.best_epoch or self.epochs_run
        self.epochs_trained = self.epochs_trained or self.epochs_run


class DryRunner(TrialRunner):
    """The trial runner with each claimed batch's training replaced by `epoch_s` of sleep per
    epoch (each session's real `on_epoch_end`: report, pruning, deadline)."""

    epoch_s = 0.1

    def _train(self, sessions: Sequence[TrialSession]) -> list:
        print(f"dry worker {os.getpid()} trains {[s.number for s in sessions]}", flush=True)
        metric = self.spec.metric
        epochs = max(int(s.params.get("epochs", 1)) for s in sessions)
        results: list = [None] * len(sessions)
        for epoch in range(1, epochs + 1):
            time.sleep(self.epoch_s)
            for index, session in enumerate(sessions):
                if results[index] is None and epoch <= int(session.params.get("epochs", 1)):
                    try:
                        session.on_epoch_end(epoch, {metric: DRY_VALUE})
                    except Exception as error:  # pruned, timed out: this session only
                        results[index] = error
        return [result if result is not None else DryResult(
            {metric: DRY_VALUE}, int(session.params.get("epochs", 1)),
            list(session.history)) for session, result in zip(sessions, results, strict=True)]


def run(spec_path: str, *, epoch_s: float = 0.1, n_trials: int | None = None) -> str:
    """Runs the study of `spec_path` as a worker does, sleeping instead of training; returns
    why it stopped."""
    spec = load_spec(spec_path)
    url = resolve_storage(None, spec.storage)
    lost = LostRuns()
    storage = open_storage(url, on_stale=lost, resilient=True)
    try:
        study = ready_study(spec, storage)  # a running study: no lock to queue on
        if study is None:
            with study_lock(url, spec.name):
                study = prepare_queue(spec, storage, url, lost)
        tracker = NullTracker()
        runner = DryRunner(spec, study, storage, NullData(), tracker, "dry", "dry")
        runner.epoch_s = epoch_s
        loop = StudyLoop(spec, study, storage, runner, tracker, lost, n_trials=n_trials)
        reason = loop.run()
        return f"{reason}: {len(loop.outcomes)} trials"
    finally:
        close_storage(storage)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m search.study.dry_worker",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("spec")
    parser.add_argument("--epoch-s", type=float, default=0.1, help="seconds per epoch")
    parser.add_argument("--n-trials", type=int, default=None)
    args = parser.parse_args(argv)
    reason = run(args.spec, epoch_s=args.epoch_s, n_trials=args.n_trials)
    print(f"dry worker {os.getpid()}: {reason}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
