"""Typed, frozen configuration of one training run and of one dataset.

Every field name here is also the YAML key, the Optuna parameter and the MLflow parameter (see
ARCHITECTURE.md, "One name per idea"). Unknown keys and out-of-range values raise `ConfigError`
naming the field, what was expected and what was found.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.errors import ConfigError

VGG16_MIN_IMAGE_SIZE = 32
VGG16_BLOCKS = 5
POOLINGS = ("avg", "flatten")
CLASS_WEIGHTS = ("none", "balanced")
# Keras dtype policies of VGG16's conv layers: float32, or bfloat16 / float16 arithmetic on float32
# weights (the head, its softmax and the cached features stay float32).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# The head's hidden activation: Keras names (keras.activations), gelu exact (erf, not tanh).
ACTIVATIONS = ("relu", "gelu")
# Train / validation / test fractions when a dataset does not say (the spec's default too).
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
# Settings added after epoch records were first written, at the value that computes what was
# computed before the setting existed: a record's key leaves a setting out at that value, so the
# records written before it existed stay valid (trainer.heads.epoch_record).
NEUTRAL_VALUES: dict[str, Any] = {"precision": "float32", "label_smoothing": 0.0,
                                  "activation": "relu"}


@dataclass(frozen=True)
class TrainConfig:
    """One configuration of the VGG16 + head classifier.

    Attributes:
        learning_rate: Adam's learning rate, > 0.
        batch_size: examples per gradient step, >= 1.
        epochs: passes over the training split, >= 1.
        head_width: units of the head's hidden Dense layer, >= 1.
        dropout: dropout rate after the hidden layer, in [0, 1).
        pooling: how VGG16's last feature map becomes a vector: ``avg`` or ``flatten``.
        trainable_blocks: 0 keeps VGG16 frozen; k fine-tunes its last k conv blocks (at most 5).
        image_size: side of the square RGB input in pixels, >= 32 (VGG16's minimum).
        weights: ``imagenet`` (Keras' download and cache), ``none`` (a fixed random base), or the
            path of a local VGG16 no-top weights file.
        class_weight: ``none`` or ``balanced`` (scikit-learn's inverse-frequency weights).
        early_stopping_patience: stop after this many epochs without a better val_loss; 0 = off.
        augment: random horizontal flips of the training faces (disables the feature cache).
        seed: seeds the head's initialisation, shuffling and dropout.
        weight_decay: decoupled weight decay of the trained part's weights (AdamW-style, each
            step shrinks a weight by learning_rate * weight_decay of itself), >= 0; 0 = off.
        precision: the Keras dtype policy of VGG16's conv layers: ``float32`` (the default),
            ``mixed_bfloat16`` (CPUs with AMX / AVX-512 BF16, recent GPUs) or ``mixed_float16``
            (GPUs). Weights, the head and the cached features stay float32; features computed
            in another precision are cached apart.
        label_smoothing: smooths the cross-entropy's targets towards the uniform: a face's target
            is onehot * (1 - label_smoothing) + label_smoothing / classes; in [0, 1), 0 = off.
        activation: the head's hidden activation: ``relu`` (the default) or ``gelu``.
    """

    learning_rate: float = 1e-3
    batch_size: int = 32
    epochs: int = 10
    head_width: int = 256
    dropout: float = 0.5
    pooling: str = "avg"
    trainable_blocks: int = 0
    image_size: int = 48
    weights: str = "imagenet"
    class_weight: str = "none"
    early_stopping_patience: int = 0
    augment: bool = False
    seed: int = 0
    weight_decay: float = 0.0
    precision: str = "float32"
    label_smoothing: float = 0.0
    activation: str = "relu"

    def __post_init__(self) -> None:
        _check_number(
            "learning_rate", self.learning_rate, float, "a number > 0", low=0, open_low=True
        )
        _check_number("batch_size", self.batch_size, int, "an integer >= 1", low=1)
        _check_number("epochs", self.epochs, int, "an integer >= 1", low=1)
        _check_number("head_width", self.head_width, int, "an integer >= 1", low=1)
        _check_number("dropout", self.dropout, float, "a number in [0, 1)", low=0, high=1)
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_number(
            "trainable_blocks", self.trainable_blocks, int,
            f"an integer in 0..{VGG16_BLOCKS}", low=0, high=VGG16_BLOCKS, closed_high=True,
        )
        _check_number(
            "image_size", self.image_size, int,
            f"an integer >= {VGG16_MIN_IMAGE_SIZE} (VGG16's minimum input size)",
            low=VGG16_MIN_IMAGE_SIZE,
        )
        if not isinstance(self.weights, str) or not self.weights:
            raise ConfigError("weights", "'imagenet', 'none' or a weights file path", self.weights)
        _check_choice("class_weight", self.class_weight, CLASS_WEIGHTS)
        _check_number(
            "early_stopping_patience", self.early_stopping_patience, int, "an integer >= 0", low=0
        )
        if not isinstance(self.augment, bool):
            raise ConfigError("augment", "true or false", self.augment)
        _check_number("seed", self.seed, int, "an integer >= 0", low=0)
        _check_number("weight_decay", self.weight_decay, float, "a number >= 0", low=0)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_number("label_smoothing", self.label_smoothing, float, "a number in [0, 1)",
                      low=0, high=1)
        _check_choice("activation", self.activation, ACTIVATIONS)

    @property
    def uses_feature_cache(self) -> bool:
        """True when the frozen part of VGG16 can be computed once and cached."""
        return not self.augment

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Builds a config from plain values; unknown keys raise `ConfigError`."""
        return _from_dict(cls, values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> TrainConfig:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class DataConfig:
    """Where an ExpW-format dataset lives and how it is read and split.

    Attributes:
        root: the dataset's folder (holding ``label.lst`` or ``label/label.lst``).
        label_file: explicit path of label.lst, if not in one of the usual places.
        image_dir: explicit image folder, if not ``image/origin``, ``origin`` or ``Images``.
        margin: extra context around each face box, as a fraction of the box's size per side.
        min_confidence: drop faces whose detector score is below this.
        split: train / validation / test fractions, summing to 1.
        split_seed: seeds the grouped, stratified split.
        strict: turn skipped lines and unreadable images into errors.
        cache_dir: where crops and features are cached.
        workers: threads decoding images while the crop cache is built (None: one per core).
    """

    root: Path
    label_file: Path | None = None
    image_dir: Path | None = None
    margin: float = 0.0
    min_confidence: float | None = None
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0
    strict: bool = False
    cache_dir: Path = field(default_factory=lambda: Path(".cache"))
    workers: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        object.__setattr__(self, "cache_dir", Path(self.cache_dir))
        for name in ("label_file", "image_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value))
        _check_number("margin", self.margin, float, "a number in [0, 1]", low=0, high=1,
                      closed_high=True)
        if self.min_confidence is not None:
            _check_number("min_confidence", self.min_confidence, float, "a number >= 0", low=0)
        split = tuple(self.split)
        if (
            len(split) != 3
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in split)
            or any(v < 0 for v in split)
            or not math.isclose(sum(split), 1.0, abs_tol=1e-6)
            or split[0] <= 0
        ):
            raise ConfigError(
                "split",
                "three fractions [train, val, test] >= 0 summing to 1, train > 0",
                self.split,
            )
        object.__setattr__(self, "split", tuple(float(v) for v in split))
        _check_number("split_seed", self.split_seed, int, "an integer >= 0", low=0)
        if self.workers is not None:
            _check_number("workers", self.workers, int, "an integer >= 1", low=1)


def _from_dict(cls: type, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(cls.__name__, "a mapping of field names to values", values)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(unknown[0], f"one of the fields {sorted(known)}", "an unknown key")
    return cls(**values)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(name, "one of " + ", ".join(repr(c) for c in choices), value)


def _check_number(
    name: str,
    value: object,
    kind: type,
    expected: str,
    *,
    low: float | None = None,
    high: float | None = None,
    open_low: bool = False,
    closed_high: bool = False,
) -> None:
    # bool is an int subclass in Python; `batch_size: true` is a typo, not 1.
    ok_type = (
        isinstance(value, int) and not isinstance(value, bool)
        if kind is int
        else isinstance(value, int | float) and not isinstance(value, bool)
    )
    if not ok_type or (kind is float and not math.isfinite(value)):
        raise ConfigError(name, expected, value)
    if low is not None and (value <= low if open_low else value < low):
        raise ConfigError(name, expected, value)
    if high is not None and (value > high if closed_high else value >= high):
        raise ConfigError(name, expected, value)
