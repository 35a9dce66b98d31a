"""`precision`: VGG16's conv layers in mixed bfloat16 / float16, features and heads in float32."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import ConfigError, TrainConfig, batch_key, train
from trainer.network.features import feature_path, features_for, forget_loaded
from trainer.network.model import build_network, cut_name, precision_scope, weights_fingerprint

BASE = TrainConfig(weights="none", image_size=32, epochs=2, batch_size=16, head_width=32,
                   learning_rate=1e-2, dropout=0.0)
# Measured on this project's CPU (AMX), random base (weights none), these 32 px faces: bf16
# features differ from float32 by 0.58% in norm (||bf16 - f32|| / ||f32||), and by at most 0.75%
# of the largest feature element-wise (float16: 0.07% and 0.09%). bf16 keeps 8 significant bits,
# about 2.4 decimal digits, and VGG16 sums thousands of products per output.
BF16_FEATURE_RTOL = 2e-2


@pytest.mark.parametrize("bad", ["bfloat16", "float16", "mixed_bf16", "", None, 32])
def test_an_unknown_precision_is_refused_naming_the_field(bad):
    with pytest.raises(ConfigError, match="precision") as info:
        BASE.replace(precision=bad)
    assert "mixed_bfloat16" in info.value.expected
    assert info.value.found == bad


def test_the_default_is_float32_and_precision_is_not_free_in_a_group():
    assert TrainConfig().precision == "float32"
    assert TrainConfig.from_dict({"precision": "mixed_float16"}).precision == "mixed_float16"
    assert batch_key(BASE) != batch_key(BASE.replace(precision="mixed_bfloat16"))


def test_the_feature_cache_keys_differ_and_float32_keeps_its_old_key(tmp_path):
    data = array_dataset(tmp_path)
    f32 = feature_path(data, "train", BASE)
    bf16 = feature_path(data, "train", BASE.replace(precision="mixed_bfloat16"))
    fp16 = feature_path(data, "train", BASE.replace(precision="mixed_float16"))
    assert len({f32, bf16, fp16}) == 3
    # The key as it was computed before `precision` existed: float32 caches stay valid.
    old_key = "|".join([data.fingerprint, "train", str(BASE.image_size), cut_name(BASE),
                        weights_fingerprint(BASE.weights)])
    digest = hashlib.sha256(old_key.encode()).hexdigest()[:24]
    assert f32 == Path(data.cache_dir) / "features" / f"train-{digest}.npy"


def test_bf16_features_are_close_to_float32_and_the_policy_does_not_leak(tmp_path):
    data = array_dataset(tmp_path, n_train=40, n_val=8)
    features = {}
    for precision in ("float32", "mixed_bfloat16"):
        config = BASE.replace(precision=precision)
        network = build_network(config)
        assert keras.config.dtype_policy().name == "float32"
        conv = network.full.get_layer("block1_conv1")
        assert conv.dtype_policy.name == precision
        assert conv.kernel.dtype == "float32"  # weights stay float32
        assert network.full.get_layer("expression").dtype_policy.name == "float32"
        features[precision], seconds = features_for(data, "train", config, network)
        assert seconds > 0
    assert keras.config.dtype_policy().name == "float32"
    f32, bf16 = features["float32"], features["mixed_bfloat16"]
    assert bf16.dtype == np.float32 and bf16.shape == f32.shape
    assert not np.array_equal(f32, bf16)  # bf16 arithmetic did happen
    relative = np.linalg.norm(bf16 - f32) / np.linalg.norm(f32)
    assert relative < BF16_FEATURE_RTOL
    np.testing.assert_allclose(bf16, f32, rtol=BF16_FEATURE_RTOL,
                               atol=BF16_FEATURE_RTOL * float(np.abs(f32).max()))
    # Both are cached apart and read back as they were written.
    forget_loaded()
    again, seconds = features_for(data, "train", BASE.replace(precision="mixed_bfloat16"),
                                  network)
    assert seconds == 0.0
    np.testing.assert_array_equal(again, bf16)


def test_the_policy_is_restored_after_an_error():
    with pytest.raises(RuntimeError), precision_scope("mixed_bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
        raise RuntimeError("boom")
    assert keras.config.dtype_policy().name == "float32"


def test_a_bf16_training_runs_end_to_end_and_matches_float32_closely(tmp_path):
    f32 = train(BASE, array_dataset(tmp_path / "f32"))
    bf16 = train(BASE.replace(precision="mixed_bfloat16"), array_dataset(tmp_path / "bf16"))
    assert bf16.used_feature_cache and bf16.epochs_run == BASE.epochs
    assert all(np.isfinite(row["val_loss"]) for row in bf16.history)
    assert abs(bf16.metrics["val_loss"] - f32.metrics["val_loss"]) < 0.1
    assert keras.config.dtype_policy().name == "float32"
    # The exported model computes in the same precision and outputs float32 probabilities.
    model = bf16.build_model()
    assert model.get_layer("block1_conv1").dtype_policy.name == "mixed_bfloat16"
    images = array_dataset(tmp_path / "f32").val.images[:4]
    probs = np.asarray(model.predict_on_batch(images))
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_fine_tuning_in_mixed_precision_trains_the_blocks(tmp_path, precision):
    config = BASE.replace(precision=precision, trainable_blocks=1, epochs=1, learning_rate=1e-3)
    data = array_dataset(tmp_path, n_train=32, n_val=8)
    before = build_network(config).top.get_weights()
    result = train(config, data, resume=False)
    assert np.isfinite(result.metrics["val_loss"])
    assert all(w.dtype == np.float32 for w in result.top_weights)
    # The fine-tuned conv block's kernels moved (gradients reached them through mixed layers).
    assert not np.allclose(before[0], result.top_weights[0])
    assert keras.config.dtype_policy().name == "float32"


def test_mixed_float16_features_run_on_tiny_data(tmp_path):
    config = BASE.replace(precision="mixed_float16")
    data = array_dataset(tmp_path, n_train=8, n_val=8)
    feats, _ = features_for(data, "val", config, build_network(config))
    assert feats.dtype == np.float32 and np.all(np.isfinite(feats))
