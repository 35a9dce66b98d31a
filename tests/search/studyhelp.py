"""Writes small study specs for tests and runs them in a temporary project folder."""

from __future__ import annotations

from pathlib import Path

import yaml

SPEC = {
    "sampler": "grid",
    "seed": 0,
    "metric": "val_accuracy",
    "max_consecutive_failures": 3,
    "pruner": "none",
    "space": {
        "learning_rate": [3.0e-3, 1.0e-2],
        "batch_size": [32],
        "epochs": [2],
        "head_width": [16, 32],
    },
    "train": {"image_size": 32, "weights": "none", "dropout": 0.1, "seed": 0},
    "data": {"synthetic": {"faces": 140, "seed": 0}, "cache_dir": ".cache"},
    "registry": {"model_name": "expw-test"},
}


def write_spec(folder: Path, name: str = "tiny", **changes) -> Path:
    """A copy of SPEC with top-level keys replaced (nested dicts are replaced whole)."""
    spec = {**SPEC, **changes}
    path = folder / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def urls(folder: Path) -> dict[str, str]:
    return {
        "storage_url": f"sqlite:///{folder}/studies/optuna.db",
        "tracking_uri": f"sqlite:///{folder}/mlruns/mlflow.db",
    }
