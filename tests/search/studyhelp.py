"""Writes small study specs for tests and runs them in a temporary project folder."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
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


class Stores:
    """The storages a test reads through: one per URL, opened read-only on first use (a test
    never creates a store its subject should create), all closed when the test ends. Polls go
    through them, so a test holds one engine per URL however often it polls."""

    def __init__(self) -> None:
        self._open: dict[str, object] = {}

    def get(self, url: str):
        from search.storage.sessions import open_storage

        if url not in self._open:
            self._open[url] = open_storage(url, read_only=True)
        return self._open[url]

    def study(self, url: str, name: str):
        import optuna

        return optuna.load_study(study_name=name, storage=self.get(url))

    def trials(self, url: str, name: str) -> list:
        return self.study(url, name).get_trials()

    def close(self) -> None:
        from search.storage.engines import close_storage

        for storage in self._open.values():
            close_storage(storage)
        self._open.clear()


@pytest.fixture(name="stores")
def stores_fixture() -> Iterator[Stores]:
    """`stores`: one `Stores` per test, closed at its end. A test module imports
    `stores_fixture` to use it."""
    opened = Stores()
    try:
        yield opened
    finally:
        opened.close()


def race(target: Callable, args: tuple, processes: int, timeout: float) -> list:
    """Runs `target(*args, results)` in `processes` spawned processes at once (spawn: no fork of
    a process that may hold TensorFlow) and returns what each put on `results`, one entry per
    process, waiting at most `timeout` seconds for each."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    started = [context.Process(target=target, args=(*args, results)) for _ in range(processes)]
    for process in started:
        process.start()
    answers = [results.get(timeout=timeout) for _ in started]
    for process in started:
        process.join(timeout=30)
    return answers
