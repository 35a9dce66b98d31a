"""`TrainResult`: what one training produced, on either path (the head engine or Keras `fit`),
and `build_model` / `build_trained`, which turn its weights back into the full exportable model."""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.labels import CLASS_NAMES
from trainer.metrics import Evaluation
from trainer.network.model import Network, build_network


@dataclass
class TrainResult:
    """What one training produced.

    Attributes:
        config: the configuration trained.
        history: one dict per epoch run: epoch (1-based), loss, accuracy, val_loss,
            val_accuracy, val_macro_f1.
        metrics: the validation metrics of the weights kept (the last epoch's, or the best
            epoch's when early stopping restored it).
        best_epoch: the epoch whose weights were kept.
        top_weights: weights of the trained part; `build_model` puts them into a full model.
        seconds: wall time of the whole call; feature_seconds: of it, computing features.
        epochs_trained: epochs actually computed by this call (0 when answered from a record;
            more than `epochs_run` when it trained ahead for its group).
        resumed_from_epoch: the checkpointed epoch this call resumed after (0 = fresh).
    """

    config: TrainConfig
    history: list[dict[str, float]]
    metrics: dict[str, float]
    best_epoch: int
    top_weights: list[np.ndarray]
    class_names: tuple[str, ...] = CLASS_NAMES
    seconds: float = 0.0
    feature_seconds: float = 0.0
    stopped_early: bool = False
    used_feature_cache: bool = False
    val_evaluation: Evaluation | None = None
    epochs_trained: int = 0
    resumed_from_epoch: int = 0

    @property
    def epochs_run(self) -> int:
        return len(self.history)

    def build_model(self) -> keras.Model:
        """The full exportable model: raw RGB pixels (S, S, 3) in, 7 probabilities out."""
        return build_model(self.config, self.top_weights, self.class_names)


def build_model(
    config: TrainConfig, top_weights: list[np.ndarray], class_names: tuple[str, ...] = CLASS_NAMES
) -> keras.Model:
    """Rebuilds a trained full model from its config and the trained part's weights (as kept in
    `TrainResult.top_weights`): the frozen part comes back from the `weights` setting."""
    return build_trained(config, top_weights, class_names).full


def build_trained(
    config: TrainConfig, top_weights: list[np.ndarray], class_names: tuple[str, ...] = CLASS_NAMES
) -> Network:
    """`build_model`'s network in all three views (they share layers): `full` to export, and
    `frozen` to extract a split's features for scoring on them (`trainer.evaluate`) without
    building VGG16 twice."""
    network = build_network(config, class_names)
    network.top.set_weights(top_weights)
    return network


def val_metrics(row: dict[str, float]) -> dict[str, float]:
    """An epoch's validation metrics (its `val_*` entries): a result's `metrics`."""
    return {k: v for k, v in row.items() if k.startswith("val_")}
