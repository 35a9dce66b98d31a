"""The frozen-feature cache: VGG16's frozen part runs once per dataset, not once per trial.

Features are keyed by everything that determines them: the data's fingerprint, the split, the
image size, the cut point (pooling when fully frozen, else the last frozen block), the base's
weights and, when it is not float32, the precision it computed in (float32 keys are those of
the caches written before `precision` existed). They are written once, atomically and under a
lock (several workers may ask at once: a file lock, or the dataset's `cache_lock` when workers on
several machines share the cache folder, see `trainer.files.cache_lock`), then memory-mapped by
every later training with the same inputs. A process keeps the arrays it has loaded, so a study
pays for them once. They are float32 whatever the base computed in.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.files.cache_lock import entry_lock, record_build, refresh
from trainer.files.disk_space import disk_full_as_error, require_free_space
from trainer.network.model import Network, cut_name, weights_fingerprint
from trainer.runtime import side_by_side

logger = logging.getLogger(__name__)

EXTRACT_BATCH = 64
_CHUNK = 1024  # faces read from the crop memmap per step: bounded memory on full ExpW
_loaded: dict[Path, np.ndarray] = {}


def feature_path(data: Dataset, split: str, config: TrainConfig) -> Path:
    """The cache file for one split's features under `config`'s frozen part."""
    parts = [
        data.fingerprint,
        split,
        str(config.image_size),
        cut_name(config),
        weights_fingerprint(config.weights),
    ]
    if config.precision != "float32":
        parts.append(config.precision)
    key = "|".join(parts)
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    return Path(data.cache_dir) / "features" / f"{split}-{digest}.npy"


def cached_features(data: Dataset, split: str, config: TrainConfig) -> np.ndarray | None:
    """The split's features if they are cached (in this process or on disk), else None."""
    path = feature_path(data, split, config)
    if path in _loaded:
        return _loaded[path]
    if path.is_file():
        _loaded[path] = np.load(path, mmap_mode="r")
        return _loaded[path]
    return None


def features_for(
    data: Dataset, split: str, config: TrainConfig, network: Network
) -> tuple[np.ndarray, float]:
    """Returns the split's features and the seconds spent computing them (0 when cached)."""
    found = cached_features(data, split, config)
    if found is not None:
        return found, 0.0
    if network.frozen is None:
        raise ValueError("nothing is frozen (trainable_blocks = 5): there are no features to cache")
    path = feature_path(data, split, config)
    images = data.split(split).images
    shape = (len(images), *network.frozen.output.shape[1:])
    needed = int(np.prod(shape, dtype=np.int64)) * 4 + 4096  # float32 and the .npy header
    # Before anything is created (SIGBUS otherwise): see
    # `trainer.files.disk_space.require_free_space`.
    require_free_space(path.parent, needed, "the feature cache")
    path.parent.mkdir(parents=True, exist_ok=True)
    with entry_lock(data.cache_lock, f"features-{path.stem}", path.with_suffix(".lock")):
        # Another worker (here or on another machine) may have finished it while we waited.
        refresh(path.parent)
        if path.is_file():
            _loaded[path] = np.load(path, mmap_mode="r")
            return _loaded[path], 0.0
        require_free_space(path.parent, needed, "the feature cache")
        logger.info("extracting %s features of %d faces into %s", split, len(images), path)
        record_build("features", path.stem)
        start = time.perf_counter()
        with disk_full_as_error(path.parent, needed, "the feature cache"):
            _extract_to(path, network, images, shape)
        seconds = time.perf_counter() - start
    _loaded[path] = np.load(path, mmap_mode="r")
    return _loaded[path], seconds


def _extract_to(path: Path, network: Network, images: np.ndarray, shape: tuple) -> None:
    """Streams the frozen part's outputs into a temporary .npy, then renames it into place.
    With TensorFlow's ops on one thread each, batches run side by side (`runtime.side_by_side`);
    each batch's features are the same either way (deterministic ops)."""
    # Unique even between machines (pods often share a pid): a builder whose lock was lost
    # (its database connection cut) never writes into another's temp file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype="float32", shape=shape)
        for start in range(0, len(images), _CHUNK):
            chunk = np.asarray(images[start : start + _CHUNK])

            def extract(i: int, out=out, chunk=chunk, start=start) -> None:
                batch = chunk[i : i + EXTRACT_BATCH]
                # Stored float32 whatever the base computed in (mixed precision included).
                out[start + i : start + i + len(batch)] = np.asarray(
                    network.frozen.predict_on_batch(batch), dtype="float32"
                )

            side_by_side(extract, range(0, len(chunk), EXTRACT_BATCH))
        out.flush()
        del out
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def forget_loaded() -> None:
    """Drops this process's memo of loaded features (tests use it to force a disk read)."""
    _loaded.clear()
