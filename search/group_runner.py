"""A grid group's trials, claimed together and trained in one pass (issue 11).

Grid points equal but for `learning_rate`, `head_width` and `epochs` see the same batches in the
same order; the trainer says which configs can train together (`trainer.group_key`) and trains
them in one pass (`trainer.train_group`). This module joins that to the queue and the runner:

- `claim` takes one group's WAITING trials from the grid queue (grid_queue.claim_group: each
  trial by its own atomic claim, at most grid_queue.MAX_GROUP; another worker meanwhile takes
  another group).
- `run_group` trains them together. Each trial keeps everything it has alone: its own
  per-epoch Optuna reports and pruning (a member pruned, timed out or diverged stops alone), its
  own MLflow run and metrics, its own tell; one heartbeat thread beats them all.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import optuna

import trainer
from search import grid_queue
from search.spec import StudySpec
from search.trial_runner import TrialOutcome, TrialRunner, TrialSession


def group_of(spec: StudySpec) -> grid_queue.GroupOf:
    """A grid point's group key: the trainer's `group_key` of its TrainConfig (None: alone)."""
    key_of = getattr(trainer, "group_key", None)  # None until the trainer trains groups

    def key(params: dict[str, Any]) -> Hashable | None:
        if key_of is None:  # a trainer without group training: every trial alone
            return None
        return key_of(spec.train_config(params))

    return key


def claim(
    study: optuna.Study, storage, spec: StudySpec, limit: int | None = None
) -> list[optuna.Trial]:
    """One group's WAITING trials, claimed for this process ([] when the queue is empty).

    Args:
        limit: at most this many (what is left of `--n-trials`); never above MAX_GROUP.
    """
    cap = grid_queue.MAX_GROUP if limit is None else min(grid_queue.MAX_GROUP, limit)
    return grid_queue.claim_group(study, storage, group_of(spec), max(1, cap))


def run_group(runner: TrialRunner, trials: Sequence[optuna.Trial]) -> list[TrialOutcome]:
    """Runs claimed trials of one group, together when there are several; one outcome each.

    Raises:
        trainer.TrainerError (fatal kinds), KeyboardInterrupt: after recording every trial.
    """
    if len(trials) == 1:
        return [runner.run(trials[0])]
    return runner.run_together(trials, lambda sessions: _train_together(runner, sessions))


def _train_together(runner: TrialRunner, sessions: Sequence[TrialSession]) -> list:
    configs = [session.config for session in sessions]
    data = runner.data.get(configs[0].image_size)

    def on_epoch_end(index: int, epoch: int, metrics: dict[str, float]) -> None:
        sessions[index].on_epoch_end(epoch, metrics)  # raising stops member `index` only

    return list(trainer.train_group(configs, data, on_epoch_end,
                                    share_epochs_to=runner.most_epochs))
