"""Hyperparameter search: study specs -> Optuna studies -> trainer -> MLflow -> registry.

The public API, for scripts and notebooks (the CLI, `fer-search`, is built on the same calls)::

    import search

    spec = search.load_spec("studies/quickstart.yaml")
    summary = search.run_study(spec, storage_url="sqlite:///studies/optuna.db",
                               tracking_uri="sqlite:///mlruns/mlflow.db")
    result = search.promote(spec.name, storage_url=..., tracking_uri=...)
    search.fetch("expw-vgg16@champion", "model/", tracking_uri=...)

Names are imported on first use, so ``import search`` stays cheap (no Optuna, MLflow or
TensorFlow until a name that needs them is touched). ARCHITECTURE.md maps the modules.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

# name -> the module that defines it
_EXPORTS = {
    "load_spec": "search.spec.loader",
    "spec_from_text": "search.spec.loader",
    "StudySpec": "search.spec.loader",
    "SyntheticData": "search.spec.loader",
    "ExpwData": "search.spec.loader",
    "run_study": "search.study.loop",
    "RunSummary": "search.study.loop",
    "StudyLoop": "search.study.loop",
    "TrialOutcome": "search.trial.runner",
    "promote": "search.registry.promotion",
    "PromotionResult": "search.registry.promotion",
    "fetch": "search.registry.refs",
    "parse_model_ref": "search.registry.refs",
    "predict_images": "search.registry.predict",
    "Prediction": "search.registry.predict",
    "WorkerPlan": "search.study.workers",
    "run_workers": "search.study.workers",
    "open_storage": "search.storage.sessions",
    "resolve_storage": "search.storage.sessions",
    "resolve_tracking_uri": "search.tracking.runs",
    "mask_url": "search.urls",
    "SearchError": "search.errors",
    "SpecError": "search.errors",
    "StudyError": "search.errors",
    "InputError": "search.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'search' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next access skips this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


# Optuna warnings this package triggers on purpose, each for a documented reason; every other
# warning still shows. The storage's `heartbeat_interval` argument is marked experimental, and
# heartbeats are how the trials of dead workers are found (`search.study.grid_queue`'s own
# re-queue, not Optuna's `fail_stale_trials` or its retry callback, which nothing here calls).
# Trials are claimed and told by `search.study.loop`, not `Study.optimize`, and `TrialRunner`
# beats their heartbeat itself, so Optuna's reminder that heartbeats go with `optimize` does not
# apply. (pytest resets filters per test: pyproject.toml repeats these.)
KNOWN_WARNINGS = (
    r"Argument ``heartbeat_interval`` is an experimental feature",
    r"Heartbeat of storage is supposed to be used with Study\.optimize",
)
for _message in KNOWN_WARNINGS:
    warnings.filterwarnings("ignore", message=_message)
