"""`label_smoothing`, a head hyperparameter: the cross-entropy's targets are
onehot * (1 - s) + s / classes. Both training paths honour it, heads of one group may differ in
it, and no cache ever hands one head's work to a head differing only in it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset, engine_equals_keras_fit, group_equals_alone
from trainer import CLASS_NAMES, ConfigError, TrainConfig, batch_key, train
from trainer.heads import engine, group_train, keras_pool
from trainer.heads.checkpoint import config_checkpoint_path
from trainer.heads.epoch_record import EpochRecord
from trainer.heads.grouping import FREE_IN_GROUP, track_key
from trainer.heads.head_config import HeadConfig

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=1e-2, dropout=0.0)
SMOOTH = BASE.replace(label_smoothing=0.2)
# EpochRecord(array_dataset(...), BASE).key as written before `label_smoothing` existed.
RECORD_KEY_BEFORE_LABEL_SMOOTHING = "932c541623b46e5ceed621d5"


def _differ(a, b) -> bool:
    return a.history != b.history or any(
        not np.array_equal(x, y) for x, y in zip(a.top_weights, b.top_weights, strict=True))


def test_the_head_config_carries_it_as_a_static_setting_free_in_a_group():
    plain, smooth = HeadConfig.from_config(BASE), HeadConfig.from_config(SMOOTH)
    assert (plain.label_smoothing, smooth.label_smoothing) == (0.0, 0.2)
    assert plain.program_key() != smooth.program_key()
    assert "label_smoothing" in FREE_IN_GROUP
    assert batch_key(BASE) == batch_key(SMOOTH)


def test_heads_differing_only_in_it_share_no_cache_entry(tmp_path):
    data = array_dataset(tmp_path / "data")
    # The engine's compiled programs.
    engine.clear_programs()
    specs = [HeadConfig.from_config(c) for c in (BASE, SMOOTH)]
    assert engine.program(512, 7, [specs[0]]) is not engine.program(512, 7, [specs[1]])
    assert len(engine._programs) == 2
    # The pool of compiled Keras heads.
    keras_pool.clear_pool()
    assert keras_pool.pooled_head(BASE, (512,), CLASS_NAMES) is not keras_pool.pooled_head(
        SMOOTH, (512,), CLASS_NAMES)
    assert len(keras_pool._pool) == 2
    # The memo of initial weights.
    group_train._inits.clear()
    group_train._initial_weights(BASE, (512,), CLASS_NAMES)
    group_train._initial_weights(SMOOTH, (512,), CLASS_NAMES)
    assert len(group_train._inits) == 2
    # Tracks, epoch records and checkpoints.
    assert track_key(BASE) != track_key(SMOOTH)
    assert EpochRecord(data, BASE).key != EpochRecord(data, SMOOTH).key
    assert config_checkpoint_path(data, BASE) != config_checkpoint_path(data, SMOOTH)


def test_records_written_before_it_existed_stay_valid(tmp_path):
    # Off (0) it is left out of the record's key, like `precision: float32`.
    assert EpochRecord(array_dataset(tmp_path), BASE).key == RECORD_KEY_BEFORE_LABEL_SMOOTHING


def test_the_engine_smooths_the_targets_and_a_group_equals_each_head_alone(tmp_path):
    configs = [BASE, SMOOTH, BASE.replace(label_smoothing=0.1, head_width=16)]
    together = group_equals_alone(configs, tmp_path)
    plain, smooth = together[0], together[1]
    assert _differ(plain, smooth)
    # Smoothed targets keep the loss from approaching 0: the entropy of the targets bounds it.
    assert smooth.history[-1]["loss"] > plain.history[-1]["loss"]
    assert all(np.isfinite(row["loss"]) for row in smooth.history)


def test_the_engine_computes_what_keras_fit_computes_with_smoothing(tmp_path):
    """Both paths are one loss: without dropout, the engine and Keras `fit` (the early-stopping
    path, fed the same batches) give the same per-epoch scores up to float round-off."""
    engine_equals_keras_fit(SMOOTH, tmp_path)


def test_keras_fit_with_early_stopping_trains_with_it(tmp_path):
    keras_base = BASE.replace(early_stopping_patience=2, dropout=0.3, class_weight="balanced")
    plain = train(keras_base, array_dataset(tmp_path / "plain"), resume=False)
    smooth = train(keras_base.replace(label_smoothing=0.2), array_dataset(tmp_path / "smooth"),
                   resume=False)
    assert _differ(plain, smooth)
    assert all(np.isfinite(row["loss"]) for row in smooth.history)


def test_the_keras_loss_is_the_smoothed_cross_entropy():
    keras_pool.clear_pool()
    plain = keras_pool.pooled_head(BASE, (8,), CLASS_NAMES).loss
    smooth = keras_pool.pooled_head(SMOOTH, (8,), CLASS_NAMES).loss
    labels = np.array([0, 1, 2, 3, 6])
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=5).astype("float32")
    for loss, s in ((plain, 0.0), (smooth, 0.2)):
        targets = np.eye(7)[labels] * (1 - s) + s / 7
        want = np.mean(-np.sum(targets * np.log(probs), axis=1))
        assert float(loss(labels, probs)) == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("value", [-0.1, 1.0, 1.5, float("nan"), "0.1", True])
def test_a_value_out_of_range_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="label_smoothing"):
        BASE.replace(label_smoothing=value)

