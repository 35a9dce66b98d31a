"""Checkpoints, so a training killed mid-way resumes after a finished epoch instead of epoch 1.

A checkpoint is one `.npz` under `<cache_dir>/checkpoints/`, written atomically after a finished
epoch (a reader sees the previous one or this one, never a mix): the trained weights, the
optimizer's state, the epoch reached and the history so far. A Keras-path training writes one
after every epoch; the head engine's epochs can take milliseconds, so a head's is written after
an epoch when its last one is FER_SEARCH_CHECKPOINT_S old (trainer.settings; the epoch record,
written every epoch, keeps every finished epoch's results either way; a killed training redoes
at most that much).
The shuffling order and dropout streams are functions of (seed, epoch, step)
(trainer.heads.engine), or saved with the variables (the Keras path), so nothing else is needed
to continue exactly. A training that ends (finished, pruned or diverged) deletes its
checkpoint; one that is killed or interrupted leaves it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.files.atomic import atomic_write_bytes
from trainer.network.model import cut_name, weights_fingerprint

logger = logging.getLogger(__name__)
_FORMAT = 1


@dataclass
class Checkpoint:
    """The state after `epoch` finished epochs.

    Attributes:
        epoch: epochs finished.
        arrays: named arrays (weights, optimizer state, generator states).
        history: one metrics row per finished epoch.
        extra: small JSON-able facts (e.g. early stopping's best epoch).
    """

    epoch: int
    arrays: dict[str, np.ndarray]
    history: list[dict[str, float]]
    extra: dict = field(default_factory=dict)


def checkpoint_dir(data: Dataset) -> Path:
    return Path(data.cache_dir) / "checkpoints"


def head_checkpoint_path(data: Dataset, record_key: str) -> Path:
    """A cached-feature head's checkpoint, named like its epoch record (trainings equal but for
    `epochs` continue each other's checkpoints: their first epochs are the same)."""
    return checkpoint_dir(data) / f"head-{record_key}.npz"


def config_checkpoint_path(data: Dataset, config: TrainConfig) -> Path:
    """A Keras-path training's checkpoint: one per (data, whole config)."""
    key = json.dumps(
        [_FORMAT, data.fingerprint, cut_name(config), weights_fingerprint(config.weights),
         config.to_dict()],
        sort_keys=True,
    )
    return checkpoint_dir(data) / f"fit-{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"


def save_checkpoint(path: Path, checkpoint: Checkpoint) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "epoch": checkpoint.epoch, "history": checkpoint.history,
            "extra": checkpoint.extra}
    buffer = io.BytesIO()
    np.savez(buffer, __meta__=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
             **checkpoint.arrays)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path) -> Checkpoint | None:
    """The checkpoint at `path`, or None when there is none or it cannot be read (it is then
    ignored and the training starts over, as before checkpoints existed)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as archive:
            meta = json.loads(archive["__meta__"].tobytes().decode())
            if meta.get("format") != _FORMAT:
                return None
            arrays = {k: archive[k] for k in archive.files if k != "__meta__"}
    except Exception as exc:  # truncated by a full disk, another version: start over
        logger.warning("ignoring unreadable checkpoint %s (%s)", path, exc)
        return None
    return Checkpoint(int(meta["epoch"]), arrays, meta["history"], meta.get("extra", {}))


def drop_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
