"""Sharing work along the epochs axis: trials that differ only in `epochs` train the same first
epochs, so one training to the group's largest epoch count answers them all.

A record holds, for one group (everything but `epochs` equal, same data, same frozen base), the
per-epoch history, the head's weights after each epoch and the validation probabilities after
each epoch. Heads are small (a 512 -> 256 -> 7 head is 0.5 MB an epoch), so only trainings with a
frozen base keep records. With a constant learning rate, a fixed seed and deterministic ops, the
first e epochs of a longer training are exactly a training of e epochs (a test checks it).
"""

from __future__ import annotations

import hashlib
import io
import json
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.atomic import atomic_write_bytes, file_lock
from trainer.config import TrainConfig
from trainer.dataset import Dataset
from trainer.model import cut_name, weights_fingerprint

_FORMAT = 1


def shareable(config: TrainConfig) -> bool:
    """Epochs can be shared when the base is frozen, inputs are cached features and nothing but
    the epoch count decides how training unfolds (early stopping would)."""
    return (
        config.trainable_blocks == 0
        and config.uses_feature_cache
        and config.early_stopping_patience == 0
    )


@dataclass
class EpochAnswer:
    """The state of a group's training after `epoch` epochs."""

    history: list[dict[str, float]]
    top_weights: list[np.ndarray]
    val_probs: np.ndarray


class EpochRecord:
    """The on-disk record of one group's training, read and written whole and atomically."""

    def __init__(self, data: Dataset, config: TrainConfig) -> None:
        group = {k: v for k, v in config.to_dict().items() if k != "epochs"}
        key = json.dumps(
            [
                _FORMAT,
                data.fingerprint,
                cut_name(config),
                weights_fingerprint(config.weights),
                group,
            ],
            sort_keys=True,
        )
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = Path(data.cache_dir) / "epochs" / f"{digest}.npz"

    def lock(self) -> AbstractContextManager:
        """Held while a group trains, so a worker asking for the same group waits for the
        record instead of training the same epochs again."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return file_lock(self.path.with_suffix(".lock"))

    def epochs(self) -> int:
        return len(self._load()[0]) if self.path.is_file() else 0

    def answer(self, epoch: int) -> EpochAnswer | None:
        """The training's state after `epoch` epochs, if the record reaches that far."""
        if not self.path.is_file():
            return None
        history, archive = self._load()
        if len(history) < epoch:
            return None
        n_weights = int(archive["n_weights"])
        return EpochAnswer(
            history=history[:epoch],
            top_weights=[archive[f"w{epoch}_{i}"] for i in range(n_weights)],
            val_probs=archive[f"p{epoch}"],
        )

    def save(
        self,
        history: list[dict[str, float]],
        weights: list[list[np.ndarray]],
        val_probs: list[np.ndarray],
    ) -> None:
        """Keeps the longer of this training and what the record already holds."""
        if not history or len(history) <= self.epochs():
            return
        arrays: dict[str, np.ndarray] = {
            "history": np.frombuffer(json.dumps(history).encode(), dtype=np.uint8),
            "n_weights": np.asarray(len(weights[0])),
        }
        for epoch, (epoch_weights, probs) in enumerate(zip(weights, val_probs, strict=True), 1):
            arrays[f"p{epoch}"] = probs
            for i, array in enumerate(epoch_weights):
                arrays[f"w{epoch}_{i}"] = array
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.path, buffer.getvalue())

    def _load(self) -> tuple[list[dict[str, float]], np.lib.npyio.NpzFile]:
        archive = np.load(self.path)
        history = json.loads(archive["history"].tobytes().decode())
        return history, archive
