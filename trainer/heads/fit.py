"""The Keras `fit` path: fine-tuning, augmentation and early stopping (and a frozen head that
stops early, on a pooled compiled head).

Reads top to bottom: pick what to train on (cached features of the frozen part, or raw images
when augmenting or fine-tuning), fit with Keras one epoch per call on that epoch's order of the
faces, and after every epoch score the validation split and hand the numbers to the caller, who
may stop the run by raising (that is how a search prunes).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import keras
import numpy as np

from trainer.config import VGG16_BLOCKS, TrainConfig
from trainer.data.dataset import Dataset
from trainer.errors import TrainingDiverged
from trainer.heads.engine import epoch_order
from trainer.heads.head_config import HeadConfig
from trainer.heads.inputs import class_weight_for, fresh_session
from trainer.heads.keras_pool import compile_head, pooled_head
from trainer.heads.result import TrainResult, val_metrics
from trainer.metrics import epoch_metrics, evaluation_from_probs
from trainer.network.features import cached_features, features_for
from trainer.network.model import build_network
from trainer.runtime import seed_everything

_VAL_BATCH = 256


def train_with_fit(config, data, on_epoch_end, target_epochs: int, checkpointer, start: float
                   ) -> TrainResult:
    """Fits with Keras for `target_epochs`, one `fit` call per epoch on that epoch's order of
    the faces (a function of seed and epoch, so a resumed training sees the same batches).

    Args:
        on_epoch_end: `on_epoch_end(epoch, metrics)` after each epoch, or None.
        checkpointer: a `FitCheckpointer` to save every epoch and resume from, or None.
        start: the caller's `time.perf_counter()` when the training began.
    """
    seed_everything(config.seed)
    plan = _plan(config, data)
    y_train, y_val = np.asarray(data.train.labels), np.asarray(data.val.labels)
    if not plan.compiled:
        # Fine-tuned float16 conv layers need loss scaling; a frozen base's head is float32.
        compile_head(plan.fit_model, HeadConfig.from_config(config),
                     loss_scale=config.precision == "mixed_float16" and config.trainable_blocks > 0)
    reporter = _EpochReporter(plan, y_val, config, on_epoch_end, checkpointer)
    reporter.set_model(plan.fit_model)
    keras.utils.set_random_seed(config.seed)
    done = checkpointer.restore(plan.fit_model, reporter) if checkpointer is not None else 0
    if done and on_epoch_end is not None:
        for row in reporter.history[: config.epochs]:
            on_epoch_end(int(row["epoch"]), dict(row))
    weights = class_weight_for(config, y_train)
    try:
        for epoch in range(done, target_epochs):
            if reporter.stopped_early:
                break
            order = epoch_order(config.seed, epoch + 1, len(y_train))
            plan.fit_model.fit(
                np.take(plan.x_train, order, axis=0), y_train[order],
                batch_size=config.batch_size, epochs=epoch + 1, initial_epoch=epoch,
                shuffle=False, class_weight=weights, callbacks=[reporter], verbose=0,
            )
    except Exception:  # pruned or diverged: this training is over; killed ones keep theirs
        if checkpointer is not None:
            checkpointer.drop()
        raise
    if checkpointer is not None:
        checkpointer.drop()
    kept = reporter.kept_epoch()
    if reporter.best_weights is not None:
        plan.trained.set_weights(reporter.best_weights)
    top_weights = [np.array(w) for w in plan.trained.get_weights()]
    return TrainResult(
        config=config,
        history=reporter.history[: config.epochs],
        metrics=val_metrics(reporter.history[kept - 1]),
        best_epoch=kept,
        top_weights=top_weights,
        class_names=data.class_names,
        seconds=time.perf_counter() - start,
        feature_seconds=plan.feature_seconds,
        stopped_early=reporter.stopped_early,
        used_feature_cache=_uses_cache(config),
        val_evaluation=evaluation_from_probs(y_val, reporter.probs[kept - 1], data.class_names),
        epochs_trained=len(reporter.history) - done,
        resumed_from_epoch=done,
    )


def _uses_cache(config: TrainConfig) -> bool:
    return config.uses_feature_cache and config.trainable_blocks < VGG16_BLOCKS


@dataclass
class _Plan:
    """What one training fits and scores.

    `trained` is the part whose weights are learnt (and exported); `scored` maps `x_val` to
    probabilities; `fit_model` is what Keras fits on `x_train`. On cached features all three are
    the same head; on images they are views of one network sharing its layers.
    """

    fit_model: keras.Model
    scored: keras.Model
    trained: keras.Model
    x_train: np.ndarray
    x_val: np.ndarray
    feature_seconds: float = 0.0
    compiled: bool = False


def _plan(config: TrainConfig, data: Dataset) -> _Plan:
    if _uses_cache(config):
        train_feats = cached_features(data, "train", config)
        val_feats = cached_features(data, "val", config)
        if config.trainable_blocks == 0 and train_feats is not None and val_feats is not None:
            # Everything is cached: a pooled head is trained, VGG16 is never touched.
            top = pooled_head(config, train_feats.shape[1:], data.class_names)
            return _Plan(top, top, top, train_feats, val_feats, compiled=True)
        fresh_session()
        network = build_network(config, data.class_names)
        train_feats, s1 = features_for(data, "train", config, network)
        val_feats, s2 = features_for(data, "val", config, network)
        top = network.top
        return _Plan(top, top, top, train_feats, val_feats, s1 + s2)
    fresh_session()
    network = build_network(config, data.class_names)
    fit_model = network.full
    if config.augment:
        inputs = keras.Input(network.full.input.shape[1:], name="pixels")
        flipped = keras.layers.RandomFlip("horizontal", seed=config.seed)(inputs)
        fit_model = keras.Model(inputs, network.full(flipped), name="augmented")
    return _Plan(fit_model, network.full, network.top, data.train.images, data.val.images)


class _EpochReporter(keras.callbacks.Callback):
    """Scores the validation split after each epoch, reports it, stops on NaN or no progress."""

    def __init__(
        self, plan: _Plan, y_val, config: TrainConfig, on_epoch_end, checkpointer=None
    ) -> None:
        super().__init__()
        self._plan = plan
        self._y_val = y_val
        self._config = config
        self._on_epoch_end = on_epoch_end
        self.history: list[dict[str, float]] = []
        self.best_weights: list[np.ndarray] | None = None
        self._best_index = -1
        self.stopped_early = False
        self.probs: list[np.ndarray] = []
        self._checkpointer = checkpointer

    def on_epoch_end(self, epoch: int, logs=None) -> None:
        logs = logs or {}
        loss = float(logs.get("loss", math.nan))
        probs = _predict(self._plan.scored, self._plan.x_val)
        if not math.isfinite(loss) or not np.all(np.isfinite(probs)):
            raise TrainingDiverged(
                f"the training loss became {loss} at epoch {epoch + 1} "
                f"(learning_rate={self._config.learning_rate}, "
                f"batch_size={self._config.batch_size})"
            )
        metrics = {
            "epoch": epoch + 1,
            "loss": loss,
            "accuracy": float(logs.get("accuracy", math.nan)),
            **epoch_metrics(self._y_val, probs),
        }
        self.history.append(metrics)
        self.probs.append(probs)
        self._early_stopping(metrics)
        # On disk before the caller hears of the epoch: a caller killed then loses nothing.
        if self._checkpointer is not None and epoch + 1 < self._config.epochs:
            self._checkpointer.save(self.model, self)
        if self._on_epoch_end is not None:
            self._on_epoch_end(epoch + 1, dict(metrics))

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        patience = self._config.early_stopping_patience
        if patience == 0:
            return
        index = len(self.history) - 1
        if self._best_index < 0 or metrics["val_loss"] < self.history[self._best_index]["val_loss"]:
            self._best_index = index
            self.best_weights = [np.array(w) for w in self._plan.trained.get_weights()]
        elif index - self._best_index >= patience:
            self.model.stop_training = True
            self.stopped_early = True

    def kept_epoch(self) -> int:
        """The epoch whose weights the result keeps: the best one if early stopping restored
        it, else the config's last epoch."""
        if self._best_index >= 0:
            return self._best_index + 1
        return min(len(self.history), self._config.epochs)


def _predict(model, x: np.ndarray) -> np.ndarray:
    outputs = [
        np.asarray(model.predict_on_batch(np.asarray(x[i : i + _VAL_BATCH])))
        for i in range(0, len(x), _VAL_BATCH)
    ]
    return np.concatenate(outputs)
