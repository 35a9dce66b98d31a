"""Scoring a training's weights on cached features (`trainer.evaluate.evaluate_trained`) and
checking the exported model against that path (`check_export`)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.model_calls import count_faces
from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, train
from trainer.evaluate import (
    EXPORT_SAMPLE,
    check_export,
    evaluate,
    evaluate_head,
    evaluate_trained,
    export_tolerance,
    sample_indices,
    scores_on_features,
    split_features,
)
from trainer.heads.engine import head_proba
from trainer.heads.head_config import HeadConfig
from trainer.heads.result import build_trained
from trainer.network.features import cached_features, forget_loaded
from trainer.network.model import build_network, predict_proba

CONFIG = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                     learning_rate=1e-2, dropout=0.2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A head trained on cached features, its data (test split larger than the sample) and
    its rebuilt network."""
    data = array_dataset(tmp_path_factory.mktemp("cache"), n_train=84, n_val=40)
    result = train(CONFIG, data, resume=False)
    assert result.used_feature_cache
    return result, data, build_trained(CONFIG, result.top_weights, data.class_names)


def test_cached_scores_equal_the_full_models_and_the_trainings(trained, monkeypatch):
    result, data, network = trained
    seen = count_faces(monkeypatch)
    val = evaluate_trained(network, CONFIG, result.top_weights, data, "val")
    test = evaluate_trained(network, CONFIG, result.top_weights, data, "test")
    assert seen.get("expw_vgg16", 0) == 0  # no face ran through the full model
    assert seen.get("frozen_base", 0) <= len(data.test)  # test features extracted at most once
    # What the training recorded on val, to the bit (the same features, the same forward).
    assert val.accuracy == result.metrics["val_accuracy"]
    assert val.macro_f1 == result.metrics["val_macro_f1"]
    assert val.loss == pytest.approx(result.metrics["val_loss"], abs=1e-6)
    monkeypatch.undo()
    # And what the exported model scores on raw faces.
    for split, cached in (("val", val), ("test", test)):
        full = evaluate(network.full, data.split(split))
        assert (cached.accuracy, cached.macro_f1) == (full.accuracy, full.macro_f1)
        assert cached.loss == pytest.approx(full.loss, abs=1e-6)
        assert cached.confusion == full.confusion
        np.testing.assert_allclose(
            head_proba(HeadConfig.from_config(CONFIG), result.top_weights,
                       split_features(CONFIG, data, split)),
            predict_proba(network.full, data.split(split).images), rtol=0, atol=1e-6)


def test_the_exported_model_passes_the_sample_check(trained, monkeypatch):
    result, data, network = trained
    split_features(CONFIG, data, "test", network)
    seen = count_faces(monkeypatch)
    check = check_export(network.full, CONFIG, result.top_weights, data, "test")
    assert check.ok and check.max_gap <= export_tolerance(CONFIG)
    assert check.faces == EXPORT_SAMPLE < len(data.test)
    assert seen == {"expw_vgg16": EXPORT_SAMPLE}  # the sample only, nothing extracted


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_the_sample_check_holds_with_mixed_precision_conv_layers(tmp_path, precision):
    """The exported model's conv layers compute in the same precision as the extraction did;
    its probabilities stay within the precision's tolerance of the cached path's."""
    config = CONFIG.replace(precision=precision)
    data = array_dataset(tmp_path, n_train=40, n_val=36)
    result = train(config, data, resume=False)
    network = build_trained(config, result.top_weights, data.class_names)
    assert evaluate_trained(network, config, result.top_weights, data, "val").accuracy == (
        result.metrics["val_accuracy"])
    split_features(config, data, "test", network)
    check = check_export(network.full, config, result.top_weights, data, "test")
    assert check.ok, check
    assert export_tolerance(config) > export_tolerance(CONFIG)


@pytest.mark.parametrize("corrupt", ["bias", "kernel", "hidden"])
def test_the_sample_check_fails_when_the_exported_head_weights_are_corrupted(trained, corrupt):
    result, data, _ = trained
    weights = [np.array(w) for w in result.top_weights]
    if corrupt == "bias":
        weights[3][0] += 1.0  # one class's logit shifted
    elif corrupt == "kernel":
        weights[2] = weights[2][:, ::-1].copy()  # classes swapped
    else:
        weights[0] = weights[0] * 0.5  # the hidden layer
    exported = build_trained(CONFIG, weights, data.class_names).full
    split_features(CONFIG, data, "test")
    check = check_export(exported, CONFIG, result.top_weights, data, "test")
    assert not check.ok
    assert check.max_gap > 10 * export_tolerance(CONFIG)


def test_a_split_not_cached_yet_is_extracted_once(tmp_path, monkeypatch):
    data = array_dataset(tmp_path, n_train=20, n_val=12)
    weights = build_network(CONFIG).top.get_weights()
    forget_loaded()
    assert cached_features(data, "test", CONFIG) is None
    seen = count_faces(monkeypatch)
    first = evaluate_head(CONFIG, weights, data, "test")
    again = evaluate_head(CONFIG, weights, data, "test")
    assert seen == {"frozen_base": len(data.test)}
    assert (first.accuracy, first.loss) == (again.accuracy, again.loss)


@pytest.mark.parametrize("change", [{"augment": True}, {"trainable_blocks": 1},
                                    {"early_stopping_patience": 2}])
def test_heads_not_trained_on_cached_features_are_scored_by_the_full_model(tmp_path, change):
    """Fine-tuning, augmentation and early stopping (Keras `fit`) keep the full-model path."""
    config = CONFIG.replace(**change)
    assert not scores_on_features(config)
    data = array_dataset(tmp_path, n_train=20, n_val=12)
    network = build_network(config, data.class_names)
    weights = network.top.get_weights()
    got = evaluate_trained(network, config, weights, data, "val")
    want = evaluate(network.full, data.val)
    assert (got.accuracy, got.loss) == (want.accuracy, want.loss)
    assert cached_features(data, "val", config) is None  # nothing was extracted
    with pytest.raises(ValueError, match="cached features"):
        evaluate_head(config, weights, data, "val")


def test_the_sample_is_fixed_and_spread_over_the_split():
    assert list(sample_indices(5)) == [0, 1, 2, 3, 4]
    index = sample_indices(1000)
    assert len(index) == EXPORT_SAMPLE and index[0] == 0 and index[-1] == 999
    assert list(index) == list(sample_indices(1000))
    assert len(sample_indices(0)) == 0
