"""A registered version in memory, ready to predict: what `predict` and `serve` load.

By default the version is loaded through installed code only: its ``MLmodel`` is read as YAML
data and its ``model.keras`` file in Keras' safe mode (`refs.download_version`), both into a
temporary folder, and the `ExpressionModel` class installed with fer-search wraps the model.
Nothing else stored with the version (the model-from-code ``pyfunc_model.py``, the ``code/trainer``
copy) is imported or run, so a tracking server anyone on the network can write to cannot make the
hosts that predict run code.

``trust_stored_code=True`` (``--trust-stored-code``) loads the version the way
`mlflow.pyfunc.load_model` does, running the code stored with it; still into a temporary folder,
so that loading never writes into the store it reads (MLflow would write its
``registered_model_meta`` file beside the model).

Needs MLflow and the trainer, not Optuna.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc

import trainer
from search.errors import InputError
from search.registry.pyfunc_model import EXPRESSION_COLUMN, ExpressionModel
from search.registry.refs import (
    KERAS_FILE,
    RegistryError,
    download_version,
    registry_tracker,
    resolve_version,
)


@dataclass(frozen=True)
class LoadedModel:
    """A registered version in memory.

    Attributes:
        name, version: the registered version (the reference resolved once, at load).
        image_size: the side S of the (S, S, 3) faces it takes.
        class_names: the expressions, in output order.
        stored_code: True when the code stored with the version was run to load it.
        predict: faces (N, S, S, 3), RGB in 0..255 -> a DataFrame with one probability column
            per class and ``expression``; faces of another shape raise `ValueError`.
    """

    name: str
    version: int
    image_size: int
    class_names: tuple[str, ...]
    stored_code: bool
    predict: Callable[[Any], Any]


def load_version(model_ref: str, *, tracking_uri: str,
                 trust_stored_code: bool = False) -> LoadedModel:
    """Loads the version a reference points to (resolved first, so errors name what the registry
    holds and a concurrent alias move cannot change the model mid-call).

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        tracking_uri: the MLflow registry.
        trust_stored_code: run the code stored with the version (MLflow's own loader) instead
            of the installed `ExpressionModel`.

    Raises:
        InputError: bad or unknown reference; an MLmodel naming a path outside the model's
            folder; a model that records no input size.
        RegistryError: the version's files cannot be downloaded or its `.keras` file loaded.
    """
    tracker = registry_tracker(tracking_uri)
    version = resolve_version(tracker.client, model_ref, tracking_uri)
    if trust_stored_code:
        return _load_with_stored_code(version)
    what = f"{version.name} version {version.version}"
    with tempfile.TemporaryDirectory(prefix="fer-search-model-") as local:
        info = download_version(tracker.client, version, Path(local))
        model = _installed_model(Path(local) / KERAS_FILE, what)
    size = model.image_size or info.get("image_size")
    if not size:
        raise InputError(f"{what} records no input size: it was not registered by fer-search")
    return LoadedModel(
        name=version.name,
        version=int(version.version),
        image_size=int(size),
        class_names=model.class_names,
        stored_code=False,
        predict=lambda images: model.predict(None, images),
    )


def _installed_model(path: Path, what: str):
    try:
        return ExpressionModel.from_keras_file(path)
    except trainer.TrainerError as exc:
        # The message names the temporary file, which is gone: say which version instead.
        cause = str(exc).replace(str(path), KERAS_FILE)
        raise RegistryError(f"{what}: {' '.join(cause.split())[:600]}") from None


def _load_with_stored_code(version) -> LoadedModel:
    with tempfile.TemporaryDirectory(prefix="fer-search-model-") as local:
        # dst_path makes MLflow copy the model (and write its registered_model_meta) there.
        model = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}",
                                         dst_path=local)
    outputs = model.metadata.get_output_schema()
    names = tuple(n for n in (outputs.input_names() if outputs is not None else [])
                  if n != EXPRESSION_COLUMN)
    return LoadedModel(
        name=version.name,
        version=int(version.version),
        image_size=input_size(model),
        class_names=names,
        stored_code=True,
        predict=model.predict,
    )


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
