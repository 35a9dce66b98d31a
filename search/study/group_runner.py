"""A grid group's trials, claimed together and trained in one pass (issue 11).

Grid points equal but for `learning_rate`, `batch_size`, `head_width`, `epochs` (and the other
head settings) see the faces in the same order; the trainer says which configs can train
together (`trainer.group_key`) and trains them in one go (`trainer.train_group`: a pass per batch
size, the passes side by side). This module joins that to the queue and the runner:

- `claim` takes one group's WAITING trials from the grid queue (grid_queue.claim_group: each
  trial by its own atomic claim, at most FER_SEARCH_MAX_GROUP heads, where points equal but for
  `epochs` are one head; another worker meanwhile takes another group).
- `run_group` trains them together. Each trial keeps everything it has alone: its own
  per-epoch Optuna reports and pruning (a member pruned, timed out or diverged stops alone), its
  own MLflow run and metrics, its own tell, recorded as soon as its head's training ends while
  the others train on; one heartbeat thread beats them all.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

import optuna

import trainer
from search import settings
from search.spec.loader import StudySpec
from search.study import grid_queue
from search.study.trial_runner import TrialOutcome, TrialRunner, TrialSession


def group_of(spec: StudySpec) -> grid_queue.GroupOf:
    """A grid point's group key: the trainer's `group_key` of its TrainConfig (None: alone)."""
    return _keyed(spec, "group_key")


def head_of(spec: StudySpec) -> grid_queue.GroupOf:
    """A grid point's head: the trainer's `track_key` (points equal but for `epochs` train one
    head together, so a group's cap counts them once)."""
    return _keyed(spec, "track_key")


def _keyed(spec: StudySpec, name: str) -> grid_queue.GroupOf:
    key_of = getattr(trainer, name, None)  # None with a trainer that does not train groups

    def key(params: dict[str, Any]) -> Hashable | None:
        if key_of is None:  # every trial alone
            return None
        return key_of(spec.train_config(params))

    return key


def claim(
    study: optuna.Study, storage, spec: StudySpec, limit: int | None = None
) -> list[optuna.Trial]:
    """One group's WAITING trials, claimed for this process ([] when the queue is empty): at
    most FER_SEARCH_MAX_GROUP heads.

    Args:
        limit: at most this many trials (what is left of `--n-trials`).
    """
    heads = settings.max_group()
    # A head is the points equal but for `epochs`: at most one trial per epochs value.
    per_head = len(spec.grid.get("epochs", [None])) if trainer_groups() else 1
    return grid_queue.claim_group(study, storage, group_of(spec), heads, head_of=head_of(spec),
                                  max_trials=limit, window=heads * per_head)


def trainer_groups() -> bool:
    """Whether the trainer trains groups (a trainer without `track_key` trains each alone)."""
    return getattr(trainer, "track_key", None) is not None


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

    def on_result(index: int, result) -> None:
        # Recorded (MLflow, tell) while the group's other heads still train, rather than all
        # after the longest. `run_together` concludes every session again after the training,
        # which returns this outcome, or meets this error again and raises it there.
        try:
            sessions[index].conclude(result)
        except Exception:
            pass

    return list(trainer.train_group(configs, data, on_epoch_end,
                                    share_epochs_to=runner.most_epochs, on_result=on_result))
