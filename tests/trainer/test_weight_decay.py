"""`weight_decay`, the hyperparameter added as ARCHITECTURE.md's example: a TrainConfig field the
head engine, the Keras path and a group of heads all honour."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset, group_equals_alone
from trainer import ConfigError, TrainConfig, batch_key, train

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=1e-2, dropout=0.0)


def _norm(result) -> float:
    return float(sum(np.sum(np.square(w)) for w in result.top_weights))


def test_decay_shrinks_the_heads_weights_on_the_engine(tmp_path):
    plain = train(BASE, array_dataset(tmp_path / "plain"))
    decayed = train(BASE.replace(weight_decay=0.5), array_dataset(tmp_path / "decayed"))
    assert _norm(decayed) < 0.95 * _norm(plain)


def test_heads_differing_in_decay_train_together_and_equal_each_alone(tmp_path):
    configs = [BASE, BASE.replace(weight_decay=0.1, head_width=16)]
    assert batch_key(configs[0]) == batch_key(configs[1])
    group_equals_alone(configs, tmp_path)


def test_decay_reaches_the_keras_path(tmp_path):
    # Early stopping trains through Keras `fit` (a pooled head compiled with AdamW-style decay).
    keras_base = BASE.replace(early_stopping_patience=5)
    plain = train(keras_base, array_dataset(tmp_path / "plain"))
    decayed = train(keras_base.replace(weight_decay=0.5), array_dataset(tmp_path / "decayed"))
    assert _norm(decayed) < 0.95 * _norm(plain)


def test_a_negative_decay_is_refused_with_the_rule():
    with pytest.raises(ConfigError, match="weight_decay"):
        BASE.replace(weight_decay=-1e-4)
