"""Predicting expressions of face images with a registered model.

Faces are made by the trainer's own functions (`trainer.read_image`, `trainer.crop_face`), the
very path the crop cache trained the model on, so a face predicted here is the face the model
would have been trained on.

The model is loaded by `search.registry.loading.load_version`: through the installed
`ExpressionModel` on the version's ``model.keras`` (safe mode), running nothing stored with the
model unless ``trust_stored_code`` asks for MLflow's loader; either way from a temporary copy,
never writing into the store it reads.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

import trainer
from search.errors import InputError
from search.registry.loading import load_version
from search.registry.pyfunc_model import EXPRESSION_COLUMN

Box = tuple[int, int, int, int]
# A box keeping less than this share of its area on the image is "far outside": warned about.
FAR_OUTSIDE = 0.5


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
    paths: Sequence[Path | str],
    image_size: int,
    box: Box | None = None,
    warn: Callable[[str], None] | None = None,
) -> np.ndarray:
    """Reads images into a uint8 batch (N, image_size, image_size, 3).

    Args:
        paths: image files (any format Pillow reads).
        image_size: the side of the square faces the model takes.
        box: optional face box ``(top, left, right, bottom)`` in pixels, ExpW's order, applied to
            every image; clipped to each image's bounds.
        warn: told when the box lies mostly outside an image (default: `warnings.warn`).

    Raises:
        InputError: a file is missing or not a readable image, or the box is empty or lies
            outside an image.
    """
    if box is not None:
        _check_box(box)
    faces = [_load_face(Path(path), image_size, box, warn or _warn) for path in paths]
    if not faces:
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    return np.stack(faces)


def predict_images(
    model_ref: str,
    paths: Sequence[Path | str],
    *,
    tracking_uri: str,
    box: Box | None = None,
    warn: Callable[[str], None] | None = None,
    trust_stored_code: bool = False,
) -> list[Prediction]:
    """Predicts the expression in each image with a registered model.

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        paths: image files; each is resized to the model's input size.
        tracking_uri: the MLflow registry.
        box: optional face box ``(top, left, right, bottom)``, applied to every image.
        warn: told when the box lies mostly outside an image.
        trust_stored_code: load the model with the code stored beside it (MLflow's loader)
            rather than the installed `ExpressionModel`.

    Returns:
        One `Prediction` per path, in order.

    Raises:
        InputError: no images, a bad image or box, or an unknown model reference.
    """
    if not paths:
        raise InputError("no images given: pass one or more image files")
    model = load_version(model_ref, tracking_uri=tracking_uri,
                         trust_stored_code=trust_stored_code)
    images = load_images(paths, model.image_size, box, warn)
    frame = model.predict(images)

    class_names = [c for c in frame.columns if c != EXPRESSION_COLUMN]
    return [
        Prediction(
            file=Path(path),
            expression=str(row[EXPRESSION_COLUMN]),
            probabilities={name: float(row[name]) for name in class_names},
        )
        for path, (_, row) in zip(paths, frame.iterrows(), strict=True)
    ]


def _check_box(box: Box) -> None:
    top, left, right, bottom = box
    if right <= left or bottom <= top:
        raise InputError(
            f"box: expected top,left,right,bottom with right > left and bottom > top, "
            f"but got {','.join(map(str, box))}"
        )


def _load_face(path: Path, image_size: int, box: Box | None,
               warn: Callable[[str], None]) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            # Pillow warns past 89 M pixels; read_image refuses every such image itself, and
            # says so in the error (trainer.data.faces.MAX_PIXELS).
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = trainer.read_image(path)
    except trainer.UnreadableImage as err:
        raise InputError(_unreadable(path, err)) from None
    face = trainer.crop_face(image, box, image_size)  # the crop cache's own path
    if face is None:
        raise InputError(
            f"{path}: the box {','.join(map(str, box))} (top,left,right,bottom) lies outside "
            f"the {image.width}x{image.height} image"
        )
    if box is not None:
        _warn_if_far_outside(path, box, image.width, image.height, warn)
    return face


def _unreadable(path: Path, err) -> str:
    if err.kind == "missing":
        return f"{path}: no such image file"
    if err.detail == "a folder":
        return f"{path}: is a folder, not an image file"
    return f"{path}: not a readable image ({err.kind}{f': {err.detail}' if err.detail else ''})"


def _warn_if_far_outside(path: Path, box: Box, width: int, height: int,
                         warn: Callable[[str], None]) -> None:
    top, left, right, bottom = box
    inside = max(0, min(right, width) - max(left, 0)) * max(0, min(bottom, height) - max(top, 0))
    share = inside / ((right - left) * (bottom - top))
    if share < FAR_OUTSIDE:
        warn(f"{path}: only {share:.0%} of the box {','.join(map(str, box))} "
             f"(top,left,right,bottom) lies on the {width}x{height} image; it was clipped to it")


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)
