"""Predicting expressions of face images with a registered model.

Images are read and cropped the way the trainer reads ExpW (Pillow, RGB, the box clipped to the
image, one bilinear resize to the model's input size), so a face predicted here looks like the
faces the model was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from search.errors import InputError

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class Prediction:
    """One image's prediction.

    Attributes:
        file: the image file, as given.
        expression: the most probable expression.
        probabilities: expression -> probability, in the model's class order (sums to 1).
    """

    file: Path
    expression: str
    probabilities: dict[str, float]


def load_images(
    paths: Sequence[Path | str], image_size: int, box: Box | None = None
) -> np.ndarray:
    """Reads images into a uint8 batch (N, image_size, image_size, 3).

    Args:
        paths: image files (any format Pillow reads).
        image_size: the side of the square faces the model takes.
        box: optional face box ``(top, left, right, bottom)`` in pixels, ExpW's order, applied to
            every image; clipped to each image's bounds.

    Raises:
        InputError: a file is missing or not a readable image, or the box is empty or lies
            outside an image.
    """
    if box is not None:
        _check_box(box)
    faces = [_load_face(Path(path), image_size, box) for path in paths]
    if not faces:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(faces)


def predict_images(
    model_ref: str,
    paths: Sequence[Path | str],
    *,
    tracking_uri: str,
    box: Box | None = None,
) -> list[Prediction]:
    """Predicts the expression in each image with a registered model.

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        paths: image files; each is resized to the model's input size.
        tracking_uri: the MLflow registry.
        box: optional face box ``(top, left, right, bottom)``, applied to every image.

    Returns:
        One `Prediction` per path, in order.

    Raises:
        InputError: no images, a bad image or box, or an unknown model reference.
    """
    if not paths:
        raise InputError("no images given: pass one or more image files")
    model = load_registered_model(model_ref, tracking_uri=tracking_uri)
    images = load_images(paths, input_size(model), box)
    frame = model.predict(images)
    from search.pyfunc_model import EXPRESSION_COLUMN

    class_names = [c for c in frame.columns if c != EXPRESSION_COLUMN]
    return [
        Prediction(
            file=Path(path),
            expression=str(row[EXPRESSION_COLUMN]),
            probabilities={name: float(row[name]) for name in class_names},
        )
        for path, (_, row) in zip(paths, frame.iterrows(), strict=True)
    ]


def load_registered_model(model_ref: str, *, tracking_uri: str):
    """The pyfunc model a reference points to, resolved to its version first, so errors name
    what the registry holds and a concurrent alias move cannot change the model mid-call."""
    import mlflow.pyfunc

    from search.registry import registry_tracker, resolve_version

    tracker = registry_tracker(tracking_uri)
    version = resolve_version(tracker.client, model_ref, tracking_uri)
    return mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")


def input_size(model) -> int:
    """The side S of the (-1, S, S, 3) faces a loaded pyfunc model's signature takes."""
    schema = model.metadata.get_input_schema()
    if schema is not None and schema.is_tensor_spec():
        shape = schema.inputs[0].shape
        if len(shape) == 4 and shape[1] and shape[1] > 0:
            return int(shape[1])
    size = (model.metadata.metadata or {}).get("image_size")
    if size:
        return int(size)
    raise InputError("the model records no input size: it was not registered by fer-search")


def _check_box(box: Box) -> None:
    top, left, right, bottom = box
    if right <= left or bottom <= top:
        raise InputError(
            f"box: expected top,left,right,bottom with right > left and bottom > top, "
            f"but got {','.join(map(str, box))}"
        )


def _load_face(path: Path, image_size: int, box: Box | None) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()  # decode now: a truncated file fails here, not in resize
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise InputError(f"{path}: no such image file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        # Pillow reports corrupt data as OSError, ValueError or SyntaxError by format.
        raise InputError(f"{path}: not a readable image ({exc})") from None
    region = (0, 0, rgb.width, rgb.height) if box is None else _clip(path, box, rgb.size)
    # resize(box=...) crops and resizes in one pass, as the trainer's crop cache does.
    face = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR, box=region)
    return np.asarray(face, dtype=np.uint8)


def _clip(path: Path, box: Box, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The box as Pillow's (left, upper, right, lower), clipped to a width x height image."""
    width, height = size
    top, left, right, bottom = box
    left, top = max(0, left), max(0, top)
    right, bottom = min(width, right), min(height, bottom)
    if right <= left or bottom <= top:
        raise InputError(
            f"{path}: the box {','.join(map(str, box))} (top,left,right,bottom) lies outside "
            f"the {width}x{height} image"
        )
    return left, top, right, bottom
