"""The VGG16 ExpW trainer: read ExpW, train and score configurations, export the model.

Training is one protocol: `train(config, data)` for one configuration; `train_many(configs,
data, on_epoch=, on_done=)` for several, which the trainer trains together where they can share
work (it decides which: configs of equal `batch_key` may go to one call; `batch_cost` says what a
call holds at once).

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
    "HeadFailed": "trainer.errors",
    "TrainerError": "trainer.errors",
    "TrainingDiverged": "trainer.errors",
    "WeightsError": "trainer.errors",
    "DataConfig": "trainer.config",
    "TrainConfig": "trainer.config",
    "DataReport": "trainer.data.dataset",
    "Dataset": "trainer.data.dataset",
    "Split": "trainer.data.dataset",
    "Evaluation": "trainer.metrics",
    "UnreadableImage": "trainer.data.faces",
    "crop_face": "trainer.data.faces",
    "read_image": "trainer.data.faces",
    "class_weights": "trainer.data.loading",
    "load_dataset": "trainer.data.loading",
    "inspect_dataset": "trainer.data.loading",
    "generate_synthetic_expw": "trainer.data.synthetic",
    "set_threads": "trainer.runtime",
    "load_tensorflow": "trainer.runtime",
    "defer_tensorflow": "trainer.runtime",
    "EpochCallback": "trainer.train",
    "ManyEpochCallback": "trainer.train",
    "DoneCallback": "trainer.train",
    "TrainResult": "trainer.heads.result",
    "train": "trainer.train",
    "train_many": "trainer.train",
    "batch_key": "trainer.heads.grouping",
    "batch_cost": "trainer.heads.grouping",
    "build_model": "trainer.heads.result",
    "evaluate": "trainer.evaluate",
    "evaluate_trained": "trainer.evaluate",
    "scores_on_features": "trainer.evaluate",
    "check_export": "trainer.evaluate",
    "ExportCheck": "trainer.evaluate",
    "build_trained": "trainer.heads.result",
    "load_model": "trainer.network.export",
    "save_model": "trainer.network.export",
    "class_names_of": "trainer.network.model",
    "predict_proba": "trainer.network.model",
    # TensorFlow-free: `model_costs` measures in a process of its own, and a spec naming a cost
    # (COST_NAMES) is checked without TensorFlow.
    "COST_NAMES": "trainer.costs",
    "ModelCosts": "trainer.costs",
    "model_costs": "trainer.costs",
    "shape_key": "trainer.costs",
}

__all__ = sorted(_EXPORTS)
# Modules that import TensorFlow: it is started first, quietly and with the planned threads
# (trainer.runtime), whoever asks for one of their names first.
_NEEDS_TENSORFLOW = {"trainer.train", "trainer.heads.result",
                     "trainer.evaluate", "trainer.network.export", "trainer.network.model"}


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
    from trainer.costs import COST_NAMES, ModelCosts, model_costs, shape_key  # noqa: F401
    from trainer.data.dataset import DataReport, Dataset, Split  # noqa: F401
    from trainer.data.faces import UnreadableImage, crop_face, read_image  # noqa: F401
    from trainer.data.loading import class_weights, inspect_dataset, load_dataset  # noqa: F401
    from trainer.data.synthetic import generate_synthetic_expw  # noqa: F401
    from trainer.errors import (  # noqa: F401
        ConfigError,
        DataError,
        DiskFull,
        HeadFailed,
        TrainerError,
        TrainingDiverged,
        WeightsError,
    )
    from trainer.evaluate import (  # noqa: F401
        ExportCheck,
        check_export,
        evaluate,
        evaluate_trained,
        scores_on_features,
    )
    from trainer.heads.grouping import batch_cost, batch_key  # noqa: F401
    from trainer.heads.result import TrainResult, build_model, build_trained  # noqa: F401
    from trainer.labels import CLASS_NAMES  # noqa: F401
    from trainer.metrics import Evaluation  # noqa: F401
    from trainer.network.export import load_model, save_model  # noqa: F401
    from trainer.network.model import class_names_of, predict_proba  # noqa: F401
    from trainer.runtime import defer_tensorflow, set_threads  # noqa: F401
    from trainer.train import (  # noqa: F401
        DoneCallback,
        EpochCallback,
        ManyEpochCallback,
        train,
        train_many,
    )
