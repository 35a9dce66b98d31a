"""Saving and loading the full model as one `.keras` file.

Loading uses Keras' safe mode: a `.keras` file from elsewhere cannot run arbitrary code (Lambda
layers are refused); the model's own custom layers are registered when `trainer` is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

import keras

from trainer.errors import TrainerError


def save_model(model: keras.Model, path: str | Path) -> Path:
    """Writes `model` to `path` (a `.keras` file) atomically: readers never see half a file."""
    path = Path(path)
    if path.suffix != ".keras":
        raise TrainerError(f"model path must end in .keras, but got {str(path)!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_model(path: str | Path) -> keras.Model:
    """Loads a model saved by `save_model`, in Keras' safe mode."""
    import trainer.network.model  # noqa: F401  (registers the custom layers safe mode must know)

    path = Path(path)
    if not path.is_file():
        raise TrainerError(f"no model file at {path}")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise TrainerError(f"{path} is not a loadable .keras model: {exc}") from None
