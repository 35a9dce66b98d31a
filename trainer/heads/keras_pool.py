"""Compiled heads, reused from one training to the next.

Every `model.fit` of a new Keras model traces a new TensorFlow function, and TensorFlow keeps
each trace: about 4 MB a training, so a worker running hundreds of cached-feature trials grew
by gigabytes. Heads of one feature size, classes and built-in settings (`HeadConfig.build_key`:
width, dropout, ...) are therefore built and compiled once; before each training the pooled head
is put back exactly in the state a freshly built one would have, runtime settings included: its
seeded initial weights, its dropout seed, a zeroed optimizer with the trial's learning rate. The
traces are reused, and a training on a pooled head equals one on a fresh head (a test checks it).
"""

from __future__ import annotations

import dataclasses

import keras
from cachetools import LRUCache

from trainer.config import TrainConfig
from trainer.heads.head_config import HeadConfig
from trainer.network.model import build_head

_POOL_SIZE = 16
_pool: LRUCache = LRUCache(maxsize=_POOL_SIZE)  # least recently used out first


def pooled_head(
    config: TrainConfig, feature_shape: tuple[int, ...], class_names: tuple[str, ...]
) -> keras.Model:
    """A compiled head for `config`, in the state of a freshly built and compiled one."""
    spec = HeadConfig.from_config(config)
    key = (tuple(feature_shape), spec.build_key(), tuple(class_names))
    fresh = build_head(config, feature_shape, class_names)  # building traces nothing
    head = _pool.get(key)
    if head is None:
        head = fresh
        compile_head(head, spec)
        _pool[key] = head
        return head
    head.set_weights(fresh.get_weights())
    for pooled, new in zip(head.layers, fresh.layers, strict=True):
        generator = getattr(pooled, "seed_generator", None)
        if generator is not None:
            generator.state.assign(new.seed_generator.state)
    for variable in head.optimizer.variables:
        variable.assign(keras.ops.zeros_like(variable))
    head.optimizer.learning_rate.assign(spec.learning_rate)
    return head


@keras.saving.register_keras_serializable(package="fer_search")
class SingleDeviceAdam(keras.optimizers.Adam):
    """Adam without the cross-replica gradient sum, which is a no-op on one device but, traced,
    registers a uniquely named custom gradient in TensorFlow's global registry that is never
    freed (about 4.7 MB per compiled model, whenever a head of a new shape is compiled)."""

    def _all_reduce_sum_gradients(self, grads_and_vars):
        return grads_and_vars


@keras.saving.register_keras_serializable(package="fer_search")
class HeadTargetsCrossentropy(keras.losses.Loss):
    """Cross-entropy of sparse labels against a head's targets (`HeadConfig.targets`: smoothed
    labels, ...) on probabilities, as Keras' categorical cross-entropy computes it. Keras'
    SparseCategoricalCrossentropy takes no label smoothing; this takes sparse labels anyway."""

    def __init__(self, spec: dict, name: str = "head_targets_crossentropy", **kwargs) -> None:
        super().__init__(name=name, **kwargs)
        self.spec = dict(spec)
        self._head = HeadConfig(**self.spec)

    def call(self, y_true, y_pred):
        labels = keras.ops.reshape(keras.ops.cast(y_true, "int32"), (-1,))  # (batch,) labels
        onehot = keras.ops.one_hot(labels, y_pred.shape[-1], dtype=y_pred.dtype)
        return keras.losses.categorical_crossentropy(self._head.targets(onehot), y_pred)

    def get_config(self) -> dict:
        return {**super().get_config(), "spec": self.spec}


def compile_head(model: keras.Model, spec: HeadConfig, *, loss_scale: bool = False) -> None:
    """Compiles for the head `spec`: Adam at its learning rate (AdamW-style decay when its
    `weight_decay` > 0), the cross-entropy of its targets. `loss_scale` wraps the optimizer in
    Keras' dynamic loss scaling, which float16 layers being trained need (their small gradients
    would round to zero); bfloat16 has float32's range and does not."""
    optimizer = SingleDeviceAdam(learning_rate=spec.learning_rate,
                                 weight_decay=spec.weight_decay or None)
    if loss_scale:
        optimizer = keras.mixed_precision.LossScaleOptimizer(optimizer)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy() if spec.plain_targets
        else HeadTargetsCrossentropy(dataclasses.asdict(spec)),
        metrics=["accuracy"],
    )


def clear_pool() -> None:
    """Forgets the pooled heads (before `keras.backend.clear_session`)."""
    _pool.clear()
