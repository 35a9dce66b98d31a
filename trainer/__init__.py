"""The VGG16 ExpW trainer: read ExpW, train and score one configuration, export the model.

This package knows nothing of Optuna, MLflow or `search`; `search` reaches it only through the
names below. They are imported lazily: `from trainer import TrainConfig` does not start
TensorFlow (a spec can be validated, and a CLI error reported, in a fraction of a second).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from trainer.runtime import load_tensorflow, prepare_environment

prepare_environment()  # before anything imports TensorFlow

_EXPORTS = {
    "CLASS_NAMES": "trainer.labels",
    "ConfigError": "trainer.errors",
    "DataError": "trainer.errors",
    "DiskFull": "trainer.errors",
    "TrainerError": "trainer.errors",
    "TrainingDiverged": "trainer.errors",
    "WeightsError": "trainer.errors",
    "DataConfig": "trainer.config",
    "TrainConfig": "trainer.config",
    "DataReport": "trainer.dataset",
    "Dataset": "trainer.dataset",
    "Split": "trainer.dataset",
    "Evaluation": "trainer.metrics",
    "UnreadableImage": "trainer.faces",
    "crop_face": "trainer.faces",
    "read_image": "trainer.faces",
    "class_weights": "trainer.loading",
    "load_dataset": "trainer.loading",
    "inspect_dataset": "trainer.loading",
    "generate_synthetic_expw": "trainer.synthetic",
    "set_threads": "trainer.runtime",
    "load_tensorflow": "trainer.runtime",
    "defer_tensorflow": "trainer.runtime",
    "EpochCallback": "trainer.train",
    "TrainResult": "trainer.train",
    "train": "trainer.train",
    "train_group": "trainer.group_train",
    "group_key": "trainer.grouping",
    "track_key": "trainer.grouping",
    "GroupCallback": "trainer.group_train",
    "build_model": "trainer.train",
    "evaluate": "trainer.evaluate",
    "load_model": "trainer.export",
    "save_model": "trainer.export",
    "class_names_of": "trainer.model",
    "predict_proba": "trainer.model",
}

__all__ = sorted(_EXPORTS)
# Modules that import TensorFlow: it is started first, quietly and with the planned threads
# (trainer.runtime), whoever asks for one of their names first.
_NEEDS_TENSORFLOW = {"trainer.train", "trainer.group_train", "trainer.evaluate", "trainer.export",
                     "trainer.model"}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    if module in _NEEDS_TENSORFLOW:
        load_tensorflow()
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


class _Package(types.ModuleType):
    """`trainer.train` and `trainer.evaluate` name both a function and its module. Importing the
    module (e.g. `from trainer.train import X` somewhere first) makes Python set the package's
    attribute to the module; this keeps the exported function there instead."""

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _EXPORTS.get(name) == f"{__name__}.{name}":
            value = getattr(value, name)
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names above load on first use
    from trainer.config import DataConfig, TrainConfig  # noqa: F401
    from trainer.dataset import DataReport, Dataset, Split  # noqa: F401
    from trainer.errors import (  # noqa: F401
        ConfigError,
        DataError,
        DiskFull,
        TrainerError,
        TrainingDiverged,
        WeightsError,
    )
    from trainer.evaluate import evaluate  # noqa: F401
    from trainer.export import load_model, save_model  # noqa: F401
    from trainer.faces import UnreadableImage, crop_face, read_image  # noqa: F401
    from trainer.group_train import GroupCallback, train_group  # noqa: F401
    from trainer.grouping import group_key, track_key  # noqa: F401
    from trainer.labels import CLASS_NAMES  # noqa: F401
    from trainer.loading import class_weights, inspect_dataset, load_dataset  # noqa: F401
    from trainer.metrics import Evaluation  # noqa: F401
    from trainer.model import class_names_of, predict_proba  # noqa: F401
    from trainer.runtime import defer_tensorflow, set_threads  # noqa: F401
    from trainer.synthetic import generate_synthetic_expw  # noqa: F401
    from trainer.train import EpochCallback, TrainResult, build_model, train  # noqa: F401
