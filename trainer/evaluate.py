"""Scoring a trained configuration on a split.

- `evaluate(model, split)`: a full model (raw RGB pixels in) on a split of raw faces: every face
  through VGG16.
- `evaluate_trained(network, config, top_weights, data, split)`: what a training's weights score.
  A head trained on the frozen base's cached features (`scores_on_features`: the head engine's
  path) is scored on those features, by the forward that scored its validation split in
  training, so VGG16 runs over no face whose features are cached (a split not cached yet is
  extracted into the cache once). Anything else (fine-tuning, augmentation, early stopping:
  Keras `fit`) is scored through the full model, as `evaluate` does.
- `check_export(model, config, top_weights, data, split)`: the exported full model against the
  cached path on a small fixed sample of the split's faces: the two must give the same
  probabilities (within `export_tolerance`), or the scores computed on features are not the
  exported model's.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset, Split
from trainer.heads.engine import head_proba
from trainer.heads.grouping import shareable
from trainer.heads.head_config import HeadConfig
from trainer.metrics import Evaluation, evaluation_from_probs
from trainer.network.features import cached_features, features_for
from trainer.network.model import Network, build_network, class_names_of, predict_proba

# Faces of a split the exported model runs on to check it against the cached path.
EXPORT_SAMPLE = 32
# Largest difference of one probability allowed between the exported model and the cached path.
# The two run the same ops on the same weights; only a face's batch differs (the sample's 32
# against extraction's 64), and a kernel may sum in another order for another shape (GPUs pick
# conv algorithms per shape). float32: such reorderings move probabilities by about float32's
# rounding, ~1e-6 (an estimate); 1e-4 keeps a margin and still sees a head's bias moved by 1
# (~1e-1; tests/trainer/test_evaluate_trained.py). bfloat16 conv layers round every activation
# to 8 significant bits: a reordered sum can flip roundings all through VGG16. Their scale: all
# of bf16's rounding at once (a float32-trained head on bf16 against float32 features) moved
# the quickstart's probabilities by up to 0.011 (benchmarks/results/promotion.md); 3e-2 allows
# ~3x that. float16 keeps 11 bits (8x finer): 4e-3. On this CPU the gap was 0 in both.
_TOLERANCE = {"float32": 1e-4, "mixed_bfloat16": 3e-2, "mixed_float16": 4e-3}


def evaluate(model: keras.Model, split: Split, batch_size: int = 64) -> Evaluation:
    """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix of `model`
    (raw RGB pixels in) on `split`."""
    probs = predict_proba(model, split.images, batch_size=batch_size)
    return evaluation_from_probs(split.labels, probs, class_names_of(model))


def scores_on_features(config: TrainConfig) -> bool:
    """True when `config`'s head trained on the frozen base's cached features (the head
    engine: `trainer.heads.grouping.shareable`), so it can be scored on them too."""
    return shareable(config)


def evaluate_trained(
    network: Network, config: TrainConfig, top_weights: list[np.ndarray], data: Dataset,
    split: str,
) -> Evaluation:
    """The scores of a training's weights on `data`'s `split` ("val" or "test").

    Args:
        network: the trained network (`trainer.heads.result.build_trained`): its `full` model
            scores configs that did not train on features, its `frozen` part extracts a split's
            features that are not cached yet.
        config, top_weights: the training's config and trained weights
            (`TrainResult.config`, `TrainResult.top_weights`).
    """
    if not scores_on_features(config):
        return evaluate(network.full, data.split(split))
    return evaluate_head(config, top_weights, data, split, network)


def evaluate_head(
    config: TrainConfig, top_weights: list[np.ndarray], data: Dataset, split: str,
    network: Network | None = None,
) -> Evaluation:
    """A head trained on cached features (`scores_on_features`), scored on `split`'s features.

    The features are the cached ones the head trained on (the same cache key); a split that is
    not cached yet (the test split, the first time) is extracted once, with `network`'s frozen
    part or, when None, a base built here.
    """
    if not scores_on_features(config):
        raise ValueError("evaluate_head is for heads trained on cached features "
                         "(trainer.heads.grouping.shareable)")
    probs = head_proba(HeadConfig.from_config(config), top_weights,
                       split_features(config, data, split, network))
    return evaluation_from_probs(data.split(split).labels, probs, data.class_names)


def split_features(
    config: TrainConfig, data: Dataset, split: str, network: Network | None = None
) -> np.ndarray:
    """`split`'s features under `config`'s frozen base: from the cache, else extracted into it
    (with `network`, or a network built here)."""
    found = cached_features(data, split, config)
    if found is not None:
        return found
    if network is None:
        network = build_network(config, data.class_names)
    return features_for(data, split, config, network)[0]


@dataclass(frozen=True)
class ExportCheck:
    """The exported model against the cached path on a sample of faces.

    Attributes:
        split: the split sampled.
        faces: how many faces the exported model ran on.
        max_gap: the largest absolute difference of one probability between the two.
        tolerance: the largest allowed (`export_tolerance`).
    """

    split: str
    faces: int
    max_gap: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(self.max_gap <= self.tolerance)  # False for NaN too


def export_tolerance(config: TrainConfig) -> float:
    """The largest probability difference `check_export` allows at `config.precision`."""
    return _TOLERANCE[config.precision]


def sample_indices(n: int, size: int = EXPORT_SAMPLE) -> np.ndarray:
    """`size` faces spread evenly over a split of `n` (all of them when `n` <= `size`): a fixed
    sample, the same on every run."""
    return np.unique(np.linspace(0, n - 1, num=min(size, n)).round().astype(int)) if n else (
        np.zeros(0, dtype=int))


def check_export(
    model: keras.Model, config: TrainConfig, top_weights: list[np.ndarray], data: Dataset,
    split: str = "test", size: int = EXPORT_SAMPLE,
) -> ExportCheck:
    """Runs the exported `model` (raw RGB pixels in) on `size` faces of `split` and compares
    its probabilities with the cached path's (the head on those faces' cached features). The
    split's features must be cached (`split_features`). The caller decides what a failed
    check means."""
    features = cached_features(data, split, config)
    if features is None:
        raise ValueError(f"the {split} split's features are not cached: call split_features")
    index = sample_indices(len(features), size)
    if len(index) == 0:
        return ExportCheck(split, 0, 0.0, export_tolerance(config))
    faces = np.asarray(data.split(split).images[index])
    exported = predict_proba(model, faces, batch_size=len(index))
    cached = head_proba(HeadConfig.from_config(config), top_weights, np.asarray(features[index]))
    gap = float(np.max(np.abs(exported.astype("float64") - cached.astype("float64"))))
    return ExportCheck(split, len(index), gap, export_tolerance(config))
