"""The registered model as an MLflow pyfunc: raw face pixels in, expression probabilities out.

`search.registry.registration.log_and_register` logs this file as a "model from code": MLflow
copies it into the model and, when the model is loaded, runs it as a script, which ends by
handing MLflow an `ExpressionModel` (`mlflow.models.set_model`). Pickled models are refused by
default since MLflow 3, and code keeps working across cloudpickle versions. The trainer package
travels with the model too (its ``code/`` folder), so loading needs only the pinned pip
requirements::

    model = mlflow.pyfunc.load_model("models:/expw-vgg16@champion")
    frame = model.predict(faces)  # array (N, S, S, 3), RGB, uint8 or float32 in 0..255

The signature declares the outputs only: MLflow enforces a tensor input's dtype exactly, and
faces come as uint8 (decoded images) and float32 (most image pipelines), so `as_batch` checks
the input instead (shape, numbers, range 0..255). Served over HTTP (`fer-search serve`), the
JSON ``inputs`` arrive as int or float arrays and take the same path.

The model file (``artifacts/model.keras``) is loaded with `trainer.load_model`, in Keras' safe
mode. This module imports only MLflow, NumPy and pandas at the top: `trainer` (and TensorFlow)
load in `load_context`.

What each way of loading runs:

- ``fer-search predict`` / ``serve`` (`search.registry.loading.load_version`): this class as
  installed with fer-search, on the version's ``model.keras`` read in safe mode
  (`ExpressionModel.from_keras_file`); ``fetch`` only downloads that file and ``MLmodel``. The
  copy of this file and of ``trainer/`` stored with the model are never imported or run, so
  whoever can write to the tracking server cannot run code on the hosts that predict; at worst
  they can swap the weights.
- `mlflow.pyfunc.load_model` (and ``predict`` / ``serve --trust-stored-code``): MLflow runs the
  stored copy of this file and imports the stored ``code/trainer``: trust it only as far as you
  trust everyone who can write to the tracking server.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

import trainer

# The name under which the `.keras` file is logged in the pyfunc model's `artifacts`.
KERAS_ARTIFACT = "keras_model"
EXPRESSION_COLUMN = "expression"


class ExpressionModel(mlflow.pyfunc.PythonModel):
    """The full VGG16 + head model behind MLflow's pyfunc interface."""

    def load_context(self, context: Any) -> None:
        """Loads the `.keras` artifact and the class names it carries."""
        self._load(context.artifacts[KERAS_ARTIFACT])

    @classmethod
    def from_keras_file(cls, path: Any) -> ExpressionModel:
        """The model on a `.keras` file, without MLflow's loader: nothing but this installed
        class and Keras' safe mode touch what the store holds.

        Raises:
            trainer.TrainerError: the file is not a `.keras` model safe mode can load.
        """
        model = cls()
        model._load(path)
        return model

    def _load(self, path: Any) -> None:
        # Touching class_names_of imports trainer.network.model, which registers the model's custom
        # layers with Keras; trainer.load_model alone does not, and safe mode then refuses them.
        class_names_of = trainer.class_names_of
        self._model = trainer.load_model(path)
        self._class_names = tuple(class_names_of(self._model))

    @property
    def class_names(self) -> tuple[str, ...]:
        """The expressions, in the order of the model's outputs."""
        return self._class_names

    @property
    def image_size(self) -> int | None:
        """The side S of the (S, S, 3) faces the Keras model takes (None if it takes any)."""
        shape = tuple(self._model.input_shape)
        if len(shape) == 4 and shape[1] and shape[1] == shape[2]:
            return int(shape[1])
        return None

    # MLflow reads predict's type hints as an input schema: np.ndarray is one it knows to leave
    # alone (others, or none, draw warnings); the registered signature is the schema.
    def predict(
        self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None
    ) -> pd.DataFrame:
        """Probabilities of each expression for a batch of faces.

        Args:
            context: MLflow's context (unused: everything was loaded in `load_context`).
            model_input: a NumPy array (N, S, S, 3) of RGB faces, in 0..255: uint8, float32
                or any other numeric type (JSON numbers over HTTP). A single face (S, S, 3)
                is taken as a batch of one.
            params: unused; accepted because MLflow may pass it.

        Returns:
            A DataFrame with one row per face: one float column per class name (the
            probabilities, summing to 1) and ``expression``, the most probable class.
        """
        images = as_batch(model_input)
        size = self.image_size
        if size is not None and images.shape[1:3] != (size, size):
            raise ValueError(f"expected faces of {size}x{size}x3 RGB pixels (the model's input "
                             f"size), but got an array shaped {images.shape}")
        probs = trainer.predict_proba(self._model, images).astype("float64")
        frame = pd.DataFrame(probs, columns=list(self._class_names))
        frame[EXPRESSION_COLUMN] = [self._class_names[i] for i in probs.argmax(axis=1)]
        return frame


def as_batch(model_input: Any) -> np.ndarray:
    # MLflow hands tensor inputs over as arrays; a DataFrame or list here is a caller's mistake
    # that np.asarray would turn into a confusing shape error deep inside Keras.
    if isinstance(model_input, pd.DataFrame):
        raise TypeError("ExpressionModel.predict takes a NumPy array of faces, not a DataFrame")
    images = np.asarray(model_input)
    if images.ndim == 3:
        images = images[np.newaxis]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(
            f"expected RGB faces shaped (N, S, S, 3), but got an array shaped {images.shape}"
        )
    if images.dtype == np.uint8:
        return images
    if images.dtype == np.bool_ or not np.issubdtype(images.dtype, np.number):
        raise ValueError(f"expected pixel numbers (uint8 or float32), but got {images.dtype}")
    # The model computes in float32 (it casts uint8 itself); float32 values stay exact.
    images = images.astype(np.float32, copy=False)
    if images.size and not (np.isfinite(images).all() and images.min() >= 0
                            and images.max() <= 255):
        raise ValueError(
            f"expected pixel values in 0..255, but got values from {images.min()} to "
            f"{images.max()}"
        )
    return images


# When MLflow runs this file as a model from code (under a generated module name), hand it the
# model. Imported normally, as `search.registry.pyfunc_model`, it only defines the class.
if __name__ != "search.registry.pyfunc_model":
    from mlflow.models import set_model

    set_model(ExpressionModel())
