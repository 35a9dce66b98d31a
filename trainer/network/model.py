"""VGG16 + classification head, split at the point where training starts.

The model is one chain of layers: raw RGB pixels -> VGG16 preprocessing -> VGG16's conv blocks ->
pooling -> Dense(head_width, activation) -> Dropout -> 7-way softmax. `trainable_blocks` decides
where the chain is cut: everything before the cut is frozen (and its output can be cached),
everything after it is trained. `build_network` returns the full model and both halves, sharing
layer objects, so weights trained in the `top` half are the weights of the exported `full` model.

`precision` is the dtype policy of VGG16's conv layers alone (`precision_scope` sets it while they
are built and restores the caller's policy after): preprocessing, pooling and the head are always
float32, so features and probabilities come out float32 whatever the base computed in.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from trainer.config import VGG16_BLOCKS, TrainConfig
from trainer.errors import WeightsError
from trainer.labels import CLASS_NAMES
from trainer.runtime import side_by_side

# A random (`weights: none`) base is always initialised from this seed, whatever the trial's seed,
# so that every trial sees the same frozen features and they can be cached and shared.
RANDOM_BASE_SEED = 0
IMAGENET_NOTOP_FILE = "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"
# Keras' VGG16 ImageNet weights are "caffe" style: BGR channel order, per-channel mean removed.
_BGR_MEAN = (103.939, 116.779, 123.68)


@keras.saving.register_keras_serializable(package="fer_search")
class VGGPreprocess(keras.layers.Layer):
    """VGG16's input preprocessing inside the model: raw RGB 0-255 in, BGR minus the mean out.

    A real layer (not a Lambda) so that the saved model loads in Keras' safe mode.
    """

    def call(self, inputs):
        x = keras.ops.cast(inputs, "float32")
        x = keras.ops.flip(x, axis=-1)  # RGB -> BGR
        return x - keras.ops.convert_to_tensor(_BGR_MEAN, dtype="float32")

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package="fer_search")
class ExpressionClassifier(keras.layers.Dense):
    """The final softmax layer; carries the class names so they travel with the saved model."""

    def __init__(self, class_names=CLASS_NAMES, **kwargs):
        kwargs.pop("units", None)
        kwargs.pop("activation", None)
        super().__init__(units=len(class_names), activation="softmax", **kwargs)
        self.class_names = tuple(class_names)

    def get_config(self):
        return {**super().get_config(), "class_names": list(self.class_names)}


@dataclass
class Network:
    """One model in three views that share layers.

    Attributes:
        full: raw pixels (S, S, 3) -> 7 probabilities; what is exported.
        frozen: raw pixels -> the output at the cut (features to cache); None when nothing is
            frozen (trainable_blocks = 5).
        top: the features at the cut -> 7 probabilities; the part that is trained.
        cut: a name for the cut point, part of the feature cache key.
    """

    full: keras.Model
    frozen: keras.Model | None
    top: keras.Model
    cut: str


def cut_name(config: TrainConfig) -> str:
    """Where the chain is cut: after pooling when VGG16 is frozen, else after a VGG16 block."""
    if config.trainable_blocks == 0:
        return f"pool-{config.pooling}"
    return f"block{VGG16_BLOCKS - config.trainable_blocks}_pool"


def build_network(config: TrainConfig, class_names: tuple[str, ...] = CLASS_NAMES) -> Network:
    """Builds VGG16 (with the configured weights and precision) and a freshly initialised head,
    seeded."""
    with precision_scope(config.precision):
        vgg = _vgg16(config)
    keras.utils.set_random_seed(config.seed)
    conv_layers = vgg.layers[1:]  # drop VGG16's own Input
    pooling = (
        keras.layers.GlobalAveragePooling2D(name="pool")
        if config.pooling == "avg"
        else keras.layers.Flatten(name="pool")
    )
    head = head_layers(config, class_names)
    chain = [VGGPreprocess(name="vgg16_preprocess"), *conv_layers, pooling, *head]
    n_frozen = _frozen_prefix_length(config, conv_layers)  # counts VGGPreprocess too
    for layer in chain[:n_frozen]:
        layer.trainable = False

    inputs = keras.Input((config.image_size, config.image_size, 3), name="pixels")
    full = keras.Model(inputs, _apply(chain, inputs), name="expw_vgg16")
    frozen = None
    if n_frozen > 1:
        frozen = keras.Model(inputs, _apply(chain[:n_frozen], inputs), name="frozen_base")
        top_in = keras.Input(frozen.output.shape[1:], name="features")
    else:  # nothing but preprocessing is frozen: the top half takes raw pixels
        n_frozen = 0
        top_in = keras.Input((config.image_size, config.image_size, 3), name="pixels")
    top = keras.Model(top_in, _apply(chain[n_frozen:], top_in), name="trainable_top")
    return Network(full=full, frozen=frozen, top=top, cut=cut_name(config))


@contextmanager
def precision_scope(precision: str) -> Iterator[None]:
    """Layers built inside take `precision` as their Keras dtype policy; the global policy (of
    this thread: Keras keeps it per thread) is restored on the way out, even on an error."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def head_activation(head):
    """The activation of the hidden layer of `head` (a `TrainConfig` or a `HeadConfig`: what both
    have of a head's settings), a function of a tensor: the one definition of what the hidden
    layer computes, used by the Keras head (`head_layers`) and by the head engine's forward pass
    (trainer.heads.engine, whose gradients a tape takes through it), so the two paths cannot
    disagree and a setting acting here needs no derivative written for it."""
    return keras.activations.get(head.activation)


def head_layers(config: TrainConfig, class_names: tuple[str, ...] = CLASS_NAMES) -> list:
    """Dense(head_width, activation) -> Dropout -> softmax, initialised from the config's seed
    alone.

    Explicitly seeded initialisers make the head's starting weights independent of whatever was
    built before it, so a head built alone (cached-feature training) equals the one in the full
    network.
    """
    return [
        keras.layers.Dense(
            config.head_width,
            activation=head_activation(config),
            kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed),
            name="head_dense",
        ),
        keras.layers.Dropout(config.dropout, seed=config.seed, name="head_dropout"),
        ExpressionClassifier(
            class_names,
            kernel_initializer=keras.initializers.GlorotUniform(seed=config.seed + 1),
            name="expression",
        ),
    ]


def build_head(
    config: TrainConfig, feature_shape: tuple[int, ...], class_names: tuple[str, ...] = CLASS_NAMES
) -> keras.Model:
    """The trainable top of a fully frozen network (trainable_blocks = 0), without building VGG16:
    cached features in, probabilities out. Its weights fit `build_network(config).top`."""
    if config.trainable_blocks != 0:
        raise ValueError("build_head is for a frozen base (trainable_blocks = 0)")
    inputs = keras.Input(feature_shape, name="features")
    outputs = _apply(head_layers(config, class_names), inputs)
    return keras.Model(inputs, outputs, name="trainable_top")


def _apply(layers: list, x):
    for layer in layers:
        x = layer(x)
    return x


def _frozen_prefix_length(config: TrainConfig, conv_layers: list) -> int:
    if config.trainable_blocks == 0:
        return 1 + len(conv_layers) + 1  # preprocessing, all of VGG16, pooling
    last_frozen = f"block{VGG16_BLOCKS - config.trainable_blocks}_pool"
    if config.trainable_blocks == VGG16_BLOCKS:
        return 1
    names = [layer.name for layer in conv_layers]
    return 1 + names.index(last_frozen) + 1


def _vgg16(config: TrainConfig) -> keras.Model:
    shape = (config.image_size, config.image_size, 3)
    if config.weights == "none":
        keras.utils.set_random_seed(RANDOM_BASE_SEED)
        return keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    if config.weights == "imagenet":
        try:
            return keras.applications.VGG16(
                include_top=False, weights="imagenet", input_shape=shape
            )
        except Exception as exc:  # no network, proxy, corrupt download: all end the same way
            raise WeightsError(
                f"weights: could not load VGG16's ImageNet weights ({type(exc).__name__}: {exc}). "
                f"Keras looks for them in {imagenet_cache_path()}; put the file "
                f"'{IMAGENET_NOTOP_FILE}' there, or set `weights: <path to the .h5 file>`."
            ) from None
    path = Path(config.weights).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights: expected 'imagenet', 'none' or the path of a VGG16 no-top weights file, "
            f"but {str(path)!r} is not a file"
        )
    model = keras.applications.VGG16(include_top=False, weights=None, input_shape=shape)
    try:
        model.load_weights(str(path))
    except Exception as exc:
        raise WeightsError(
            f"weights: {path} is not a VGG16 no-top weights file ({type(exc).__name__}: {exc})"
        ) from None
    return model


def imagenet_cache_path() -> Path:
    """Where Keras caches downloaded weights (KERAS_HOME, else ~/.keras)."""
    home = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras"))
    return home / "models" / IMAGENET_NOTOP_FILE


_fingerprints: dict[tuple, str] = {}


def weights_fingerprint(weights: str) -> str:
    """Identifies the base's weights for cache keys: a content hash for files, else the mode."""
    if weights == "none":
        return f"none-seed{RANDOM_BASE_SEED}"
    path = imagenet_cache_path() if weights == "imagenet" else Path(weights).expanduser()
    if not path.is_file():
        return weights  # not there yet; building the network will report it
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        _fingerprints[key] = digest.hexdigest()[:16]
    return _fingerprints[key]


def class_names_of(model: keras.Model) -> tuple[str, ...]:
    """The class names a saved model carries (label index -> expression)."""
    for layer in reversed(model.layers):
        if isinstance(layer, ExpressionClassifier):
            return layer.class_names
    return CLASS_NAMES


def predict_proba(model: keras.Model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for raw uint8 RGB faces, in chunks so memory-mapped splits stay on disk
    (side by side when TensorFlow runs its ops so: `runtime.side_by_side`)."""
    outputs = side_by_side(
        lambda i: model.predict_on_batch(np.asarray(images[i : i + batch_size])),
        range(0, len(images), batch_size),
    )
    if not outputs:
        return np.zeros((0, model.output.shape[-1]), dtype="float32")
    return np.concatenate([np.asarray(o) for o in outputs])
