"""Training, the frozen-feature cache, export equivalence and the trainer's error paths."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import (
    ConfigError,
    TrainConfig,
    TrainingDiverged,
    WeightsError,
    evaluate,
    load_model,
    save_model,
    train,
)
from trainer.network.features import cached_features, feature_path, forget_loaded
from trainer.network.model import build_head, predict_proba

BASE = TrainConfig(
    weights="none", image_size=32, epochs=3, batch_size=16, head_width=32, learning_rate=3e-3,
    dropout=0.1,
)


@pytest.fixture
def data(tmp_path):
    return array_dataset(tmp_path / "cache")


def test_history_has_keras_names_per_epoch(data):
    result = train(BASE, data)
    assert [h["epoch"] for h in result.history] == [1, 2, 3]
    for row in result.history:
        assert set(row) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"}
    assert result.metrics == {k: v for k, v in result.history[-1].items() if k.startswith("val_")}
    assert result.used_feature_cache


def test_same_config_and_seed_give_same_metrics(data):
    first = train(BASE, data)
    second = train(BASE, data)
    assert first.history == second.history
    other_seed = train(BASE.replace(seed=1), data)
    assert other_seed.history != first.history


def test_features_are_computed_once_then_read_from_disk(data):
    first = train(BASE, data)
    assert first.feature_seconds > 0
    assert feature_path(data, "train", BASE).is_file()
    forget_loaded()  # a new process: only the disk cache remains
    second = train(BASE.replace(learning_rate=1e-3, head_width=16), data)
    assert second.feature_seconds == 0
    # Another pooling is another cut of the network: new features.
    third = train(BASE.replace(pooling="flatten"), data)
    assert third.feature_seconds > 0
    assert feature_path(data, "train", BASE) != feature_path(data, "train", third.config)


def test_exported_model_predicts_what_the_cached_path_predicted(data, tmp_path):
    result = train(BASE, data)
    head = build_head(BASE, cached_features(data, "val", BASE).shape[1:])
    head.set_weights(result.top_weights)
    val_features = np.asarray(cached_features(data, "val", BASE))
    cached_probs = np.asarray(head.predict(val_features, verbose=0))

    path = save_model(result.build_model(), tmp_path / "model.keras")
    exported = load_model(path)
    full_probs = predict_proba(exported, data.val.images)

    np.testing.assert_array_equal(full_probs.argmax(1), cached_probs.argmax(1))
    np.testing.assert_allclose(full_probs, cached_probs, atol=1e-4)
    assert evaluate(exported, data.val).accuracy == pytest.approx(result.metrics["val_accuracy"])


def test_fine_tuning_caches_the_last_frozen_block_and_exports_consistently(data):
    config = BASE.replace(trainable_blocks=1, epochs=2)
    result = train(config, data)
    features = cached_features(data, "val", config)
    assert features.ndim == 4  # a feature map (block4_pool), not a pooled vector
    model = result.build_model()
    probs = predict_proba(model, data.val.images)
    assert evaluate(model, data.val).accuracy == pytest.approx(result.metrics["val_accuracy"])
    assert np.allclose(probs.sum(1), 1, atol=1e-5)


def test_augmented_training_runs_on_images(data):
    result = train(BASE.replace(augment=True, epochs=1), data)
    assert not result.used_feature_cache
    assert result.epochs_run == 1


def test_epoch_callback_exception_passes_through_unchanged(data):
    class Stop(Exception):
        pass

    seen = []

    def on_epoch_end(epoch, metrics):
        seen.append((epoch, metrics["val_accuracy"]))
        if epoch == 2:
            raise Stop("pruned")

    with pytest.raises(Stop, match="pruned"):
        train(BASE.replace(epochs=5), data, on_epoch_end=on_epoch_end)
    assert [e for e, _ in seen] == [1, 2]


def test_nan_loss_raises_training_diverged(data):
    with pytest.raises(TrainingDiverged, match="nan"):
        train(BASE.replace(learning_rate=1e30), data)


def test_early_stopping_keeps_the_best_epoch(data):
    result = train(BASE.replace(epochs=30, early_stopping_patience=1, learning_rate=0.05), data)
    assert result.stopped_early
    assert result.epochs_run < 30
    best = min(result.history, key=lambda h: h["val_loss"])
    assert result.best_epoch == best["epoch"]
    assert result.metrics["val_loss"] == best["val_loss"]


def test_dataset_of_another_image_size_is_refused(data):
    with pytest.raises(ConfigError, match="image_size"):
        train(BASE.replace(image_size=48), data)


def test_local_weights_file(data, tmp_path):
    import keras

    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "vgg16_notop.weights.h5"
    base.save_weights(path)
    result = train(BASE.replace(weights=str(path), epochs=1), data)
    assert result.epochs_run == 1
    with pytest.raises(WeightsError, match="is not a file"):
        train(BASE.replace(weights=str(tmp_path / "missing.h5")), data)


def test_unreachable_imagenet_weights_name_the_cache_and_the_alternative(
    data, tmp_path, monkeypatch
):
    from keras.src.applications import vgg16

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(vgg16.file_utils, "get_file", offline)
    with pytest.raises(WeightsError) as info:
        train(BASE.replace(weights="imagenet"), data)
    message = str(info.value)
    assert str(tmp_path / "keras" / "models") in message
    assert "weights: <path" in message


def test_evaluation_report(data):
    result = train(BASE, data)
    report = evaluate(result.build_model(), data.test)
    assert sum(map(sum, report.confusion)) == len(data.test)
    assert set(report.per_class) == set(data.class_names)
    assert 0 <= report.macro_f1 <= 1


def test_a_reused_head_trains_exactly_like_a_fresh_one(data):
    from trainer.heads.keras_pool import clear_pool

    # Early stopping (never triggered in 3 epochs) keeps every call a real training.
    config = BASE.replace(early_stopping_patience=50, learning_rate=1e-2)
    train(config.replace(learning_rate=3e-3), data)  # features cached; the head shape pooled
    reused = train(config, data)
    reused_again = train(config, data)
    clear_pool()
    fresh = train(config, data)
    assert reused.history == reused_again.history == fresh.history
    for got, want in zip(reused.top_weights, fresh.top_weights, strict=True):
        np.testing.assert_array_equal(got, want)
