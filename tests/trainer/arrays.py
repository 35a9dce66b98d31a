"""A tiny dataset built straight from arrays (no files), for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer import train
from trainer.data.dataset import Dataset, Split
from trainer.heads.group_train import train_group


def array_dataset(cache_dir: Path, *, size: int = 32, n_train: int = 84, n_val: int = 28,
                  seed: int = 0, fingerprint: str = "arrays-v1") -> Dataset:
    """Faces whose class sets the brightness of a square: learnable, but not from one pixel."""
    rng = np.random.default_rng(seed)

    def split(name: str, n: int) -> Split:
        labels = np.arange(n) % 7
        images = rng.integers(0, 120, (n, size, size, 3)).astype("uint8")
        lo, hi = size // 4, 3 * size // 4
        images[:, lo:hi, lo:hi, :] = (60 + labels * 25)[:, None, None, None].astype("uint8")
        groups = np.array([f"{name}_{i}.jpg" for i in range(n)])
        return Split(name, images, labels, groups)

    return Dataset(
        train=split("train", n_train),
        val=split("val", n_val),
        test=split("test", n_val),
        fingerprint=fingerprint,
        image_size=size,
        cache_dir=cache_dir,
    )


def group_equals_alone(configs: list, folder: Path) -> list:
    """Trains `configs` as one group and each alone (each on its own fresh copy of the data),
    asserts that every head's history and weights are the same both ways, bit for bit, and
    returns the group's results (a head computes only from its own state, whatever shares the
    pass: trainer/heads/engine.py)."""
    together = train_group(configs, array_dataset(folder / "group"))
    for i, config in enumerate(configs):
        alone = train(config, array_dataset(folder / f"alone{i}"))
        assert together[i].history == alone.history, config
        for a, b in zip(together[i].top_weights, alone.top_weights, strict=True):
            np.testing.assert_array_equal(a, b)
    return together


def engine_equals_keras_fit(config, folder: Path) -> None:
    """Trains `config` on the head engine and through Keras `fit` (the early-stopping path, fed
    the same batches) and asserts the same per-epoch scores up to float round-off."""


    engine_result = train(config, array_dataset(folder / "engine"), resume=False)
    keras_fit = train(config.replace(early_stopping_patience=100),
                      array_dataset(folder / "keras"), resume=False)
    for got, want in zip(engine_result.history, keras_fit.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key
