"""Checkpoints of the Keras `fit` path (fine-tuning, augmentation, early stopping).

After every epoch: the trainable variables, the dropout / flip generators' states, the
optimizer's variables, the history with its val probabilities and early stopping's best epoch.
Shuffling is a function of (seed, epoch) (`trainer.heads.engine.epoch_order`), so a resumed
training continues with exactly the batches, noise and optimizer state it would have had.
"""

from __future__ import annotations

import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.heads.checkpoint import (
    Checkpoint,
    config_checkpoint_path,
    drop_checkpoint,
    load_checkpoint,
    save_checkpoint,
)


def _state_variables(model) -> list:
    """What a resumed fit needs from the model: trained weights and random generators' states
    (the frozen part comes back from the `weights` setting)."""
    return [v for v in model.variables if v.trainable or "seed_generator" in v.path]


class FitCheckpointer:
    """Saves and restores one Keras-path training's state, epoch by epoch."""

    def __init__(self, data: Dataset, config: TrainConfig) -> None:
        self.path = config_checkpoint_path(data, config)

    def save(self, model, reporter) -> None:
        arrays: dict[str, np.ndarray] = {}
        for i, var in enumerate(_state_variables(model)):
            arrays[f"s{i}"] = np.asarray(var.numpy())
        for i, var in enumerate(model.optimizer.variables):
            arrays[f"o{i}"] = np.asarray(var.numpy())
        for i, probs in enumerate(reporter.probs):
            arrays[f"p{i}"] = probs
        for i, w in enumerate(reporter.best_weights or []):
            arrays[f"b{i}"] = w
        extra = {"best_index": reporter._best_index, "stopped_early": reporter.stopped_early,
                 "n_best": len(reporter.best_weights or [])}
        save_checkpoint(self.path, Checkpoint(len(reporter.history), arrays,
                                              reporter.history, extra))

    def restore(self, model, reporter) -> int:
        """Puts the checkpointed state into `model` and `reporter`; returns the epoch reached
        (0 when there is nothing to resume)."""
        ckpt = load_checkpoint(self.path)
        if ckpt is None or ckpt.epoch == 0:
            return 0
        variables = _state_variables(model)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        optimizer_vars = model.optimizer.variables
        arrays = ckpt.arrays
        if sum(k.startswith("s") for k in arrays) != len(variables) or sum(
            k.startswith("o") for k in arrays
        ) != len(optimizer_vars):
            return 0  # another model layout: start over
        for i, var in enumerate(variables):
            var.assign(arrays[f"s{i}"])
        for i, var in enumerate(optimizer_vars):
            var.assign(arrays[f"o{i}"])
        reporter.history = list(ckpt.history)
        reporter.probs = [arrays[f"p{i}"] for i in range(ckpt.epoch)]
        reporter._best_index = int(ckpt.extra.get("best_index", -1))
        reporter.stopped_early = bool(ckpt.extra.get("stopped_early", False))
        n_best = int(ckpt.extra.get("n_best", 0))
        reporter.best_weights = [arrays[f"b{i}"] for i in range(n_best)] or None
        return ckpt.epoch

    def drop(self) -> None:
        drop_checkpoint(self.path)
