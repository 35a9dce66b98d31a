"""`activation`, a head hyperparameter: the hidden layer's relu (the default) or gelu. One
function says what it computes (trainer.network.model.head_activation) for both training paths,
and the engine's gradients are a tape's, so it came with no derivative written for it. Heads of
one group may differ in it, and no cache ever hands one head's work to a head differing in it."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from tests.trainer.arrays import array_dataset, engine_equals_keras_fit, group_equals_alone
from trainer import CLASS_NAMES, ConfigError, TrainConfig, batch_key, train
from trainer.evaluate import check_export, export_tolerance, split_features
from trainer.heads import engine, keras_pool
from trainer.heads.engine import head_proba
from trainer.heads.epoch_record import EpochRecord
from trainer.heads.grouping import FREE_IN_GROUP, track_key
from trainer.heads.head_config import HeadConfig
from trainer.heads.result import build_trained
from trainer.network.export import load_model, save_model
from trainer.network.model import build_head, head_activation

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=1e-2, dropout=0.0)
GELU = BASE.replace(activation="gelu")
# EpochRecord(array_dataset(...), BASE).key as written before `label_smoothing` and
# `activation` existed (tests/trainer/test_label_smoothing.py holds the same).
RECORD_KEY_BEFORE = "932c541623b46e5ceed621d5"


def _differ(a, b) -> bool:
    return a.history != b.history or any(
        not np.array_equal(x, y) for x, y in zip(a.top_weights, b.top_weights, strict=True))


def test_relu_is_the_default_and_the_head_config_carries_it_as_a_static_setting_free_in_a_group():
    assert TrainConfig().activation == "relu"
    relu, gelu = HeadConfig.from_config(BASE), HeadConfig.from_config(GELU)
    assert (relu.activation, gelu.activation) == ("relu", "gelu")
    assert relu.program_key() != gelu.program_key()
    assert relu.build_key() != gelu.build_key()
    assert gelu.static().activation == "gelu"  # a program is built for its value
    assert "activation" in FREE_IN_GROUP
    assert batch_key(BASE) == batch_key(GELU)
    assert track_key(BASE) != track_key(GELU)


def test_records_written_before_it_existed_stay_valid(tmp_path):
    data = array_dataset(tmp_path)
    assert EpochRecord(data, BASE).key == RECORD_KEY_BEFORE  # relu is left out of the key
    assert EpochRecord(data, GELU).key != RECORD_KEY_BEFORE


def test_one_function_says_what_the_hidden_layer_computes_on_both_paths():
    layer = build_head(GELU, (8,), CLASS_NAMES).get_layer("head_dense")
    assert layer.activation is head_activation(GELU) is keras.activations.gelu
    assert build_head(BASE, (8,), CLASS_NAMES).get_layer("head_dense").activation is (
        keras.activations.relu)
    x = np.linspace(-3, 3, 13, dtype="float32")
    assert not np.allclose(np.asarray(head_activation(GELU)(x)),
                           np.asarray(head_activation(BASE)(x)))
    # The engine's forward and the Keras head agree on the same weights, and gelu is not relu.
    features = np.random.default_rng(0).standard_normal((20, 8)).astype("float32")
    probs = {}
    for config in (BASE, GELU):
        head = build_head(config, (8,), CLASS_NAMES)
        probs[config.activation] = head_proba(HeadConfig.from_config(config), head.get_weights(),
                                              features)
        np.testing.assert_allclose(probs[config.activation], head.predict(features, verbose=0),
                                   rtol=0, atol=1e-6)
    assert not np.allclose(probs["relu"], probs["gelu"], atol=1e-4)


def test_heads_differing_only_in_it_share_no_compiled_program_or_keras_head():
    engine.clear_programs()
    specs = [HeadConfig.from_config(c) for c in (BASE, GELU)]
    assert engine.program(512, 7, [specs[0]]) is not engine.program(512, 7, [specs[1]])
    keras_pool.clear_pool()
    assert keras_pool.pooled_head(BASE, (512,), CLASS_NAMES) is not keras_pool.pooled_head(
        GELU, (512,), CLASS_NAMES)


def test_gelu_changes_the_trained_head_and_a_group_equals_each_head_alone(tmp_path):
    configs = [BASE, GELU, GELU.replace(head_width=16, dropout=0.3)]
    together = group_equals_alone(configs, tmp_path)
    relu, gelu = together[0], together[1]
    assert _differ(relu, gelu)
    assert relu.history[-1]["loss"] != gelu.history[-1]["loss"]
    assert all(np.isfinite(row["loss"]) for row in gelu.history)


def test_the_engine_computes_what_keras_fit_computes_with_gelu(tmp_path):
    """Both paths are one forward pass and one loss: without dropout, the engine (its gradients
    a tape's) and Keras `fit` (the early-stopping path, fed the same batches) give the same
    per-epoch scores up to float round-off."""
    engine_equals_keras_fit(GELU, tmp_path)


def test_a_gelu_head_exports_loads_in_safe_mode_and_passes_the_sample_check(tmp_path):
    data = array_dataset(tmp_path / "data", n_train=40, n_val=36)
    result = train(GELU, data, resume=False)
    network = build_trained(GELU, result.top_weights, data.class_names)
    split_features(GELU, data, "test", network)
    check = check_export(network.full, GELU, result.top_weights, data, "test")
    assert check.ok and check.max_gap <= export_tolerance(GELU), check
    loaded = load_model(save_model(network.full, tmp_path / "gelu.keras"))
    assert loaded.get_layer("head_dense").activation is keras.activations.gelu
    faces = data.test.images[:8]
    np.testing.assert_allclose(loaded.predict(faces, verbose=0),
                               network.full.predict(faces, verbose=0), rtol=0, atol=1e-6)


@pytest.mark.parametrize("value", ["tanh", "GELU", "", None, 1, True])
def test_a_value_not_in_the_list_is_refused_naming_the_field(value):
    with pytest.raises(ConfigError, match="activation"):
        BASE.replace(activation=value)
