"""A tiny dataset built straight from arrays (no files), for the training tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from trainer.data.dataset import Dataset, Split


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
