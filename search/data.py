"""The study's dataset, loaded once per process and image size (crops and features are cached on
disk by the trainer; this keeps the arrays in memory between trials)."""

from __future__ import annotations

from pathlib import Path

import trainer
from search.spec import StudySpec, SyntheticData


class DataProvider:
    """Hands each trial the dataset at its image size, generating synthetic data on first use."""

    def __init__(self, spec: StudySpec, cache_dir: Path | None = None) -> None:
        self._spec = spec
        self._cache_dir = cache_dir
        self._loaded: dict[int, trainer.Dataset] = {}

    def get(self, image_size: int) -> trainer.Dataset:
        if image_size not in self._loaded:
            self._ensure_synthetic()
            config = self._spec.data_config(cache_dir=self._cache_dir)
            self._loaded[image_size] = trainer.load_dataset(config, image_size)
        return self._loaded[image_size]

    def _ensure_synthetic(self) -> None:
        data = self._spec.data
        if isinstance(data, SyntheticData):
            trainer.generate_synthetic_expw(
                data.root, data.faces, data.seed, imbalance=data.imbalance
            )
