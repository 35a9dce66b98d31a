"""What a training starts from, for both paths: the inputs checked, the per-class loss weights,
the frozen base's features (cached, or extracted once), a clean Keras session."""

from __future__ import annotations

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.errors import ConfigError, DataError
from trainer.heads.keras_pool import clear_pool
from trainer.network.features import cached_features, features_for
from trainer.network.model import build_network


def check_inputs(config: TrainConfig, data: Dataset) -> None:
    """Refuses a dataset of another image size than `config`'s, or an empty train / val split."""
    if data.image_size != config.image_size:
        raise ConfigError(
            "image_size", f"the dataset's image size {data.image_size}", config.image_size
        )
    for split in (data.train, data.val):
        if len(split) == 0:
            raise DataError(f"the {split.name} split is empty: a training needs faces in it")


def class_weight_for(config: TrainConfig, labels: np.ndarray) -> dict[int, float] | None:
    """Keras `fit`'s `class_weight` for `config` on these training labels (None: unweighted)."""
    if config.class_weight == "none":
        return None
    from trainer.data.loading import class_weights

    return class_weights(labels)


def head_features(config: TrainConfig, data: Dataset) -> tuple[np.ndarray, np.ndarray, float]:
    """The train and val features of a frozen base (trainable_blocks = 0), extracted once;
    with the seconds spent extracting them (0 when both came from the cache)."""
    train_feats = cached_features(data, "train", config)
    val_feats = cached_features(data, "val", config)
    if train_feats is not None and val_feats is not None:
        return train_feats, val_feats, 0.0
    fresh_session()
    network = build_network(config, data.class_names)
    train_feats, s1 = features_for(data, "train", config, network)
    val_feats, s2 = features_for(data, "val", config, network)
    return train_feats, val_feats, s1 + s2


def fresh_session() -> None:
    """Before building a whole network: drop earlier graphs, layer names and pooled heads."""
    clear_pool()
    keras.backend.clear_session(free_memory=True)
