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
import os
import tempfile
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import NEUTRAL_VALUES, TrainConfig
from trainer.data.dataset import Dataset
from trainer.files.lock import file_lock
from trainer.network.model import cut_name, weights_fingerprint

_FORMAT = 2


@dataclass
class EpochAnswer:
    """The state of a group's training after `epoch` epochs."""

    history: list[dict[str, float]]
    top_weights: list[np.ndarray]
    val_probs: np.ndarray


class EpochRecord:
    """The on-disk record of one group's training: `history.json` (every epoch's row) and, for
    the epochs whose arrays are kept (`add_epoch`), a file of the head's weights and the val
    probabilities after it; each written atomically, an epoch's file before the history that
    names it. Epochs are added one at a time as they finish, so a killed training leaves every
    epoch it finished."""

    def __init__(self, data: Dataset, config: TrainConfig) -> None:
        # A setting at its neutral value (`precision: float32`, ...) is left out, so that
        # records written before the setting existed stay valid.
        group = {
            k: v for k, v in config.to_dict().items()
            if k != "epochs" and not (k in NEUTRAL_VALUES and v == NEUTRAL_VALUES[k])
        }
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
        self.key = hashlib.sha256(key.encode()).hexdigest()[:24]
        self.path = Path(data.cache_dir) / "epochs" / self.key
        self._history: list[dict[str, float]] | None = None

    def lock(self) -> AbstractContextManager:
        """Held while a group trains, so a worker asking for the same group waits for the
        record instead of training the same epochs again.

        A file lock even when machines share the cache folder: a group holds one per track for
        its whole training, which as locks in the storage (`Dataset.cache_lock`) would be one
        PostgreSQL connection each. The grid queue already hands a group to one worker; where
        the file lock does not hold between machines, the worst case is a track trained twice,
        each epoch's files written atomically with the same contents."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return file_lock(self.path.with_suffix(".lock"))

    def history(self) -> list[dict[str, float]]:
        if self._history is None:
            file = self.path / "history.json"
            try:
                self._history = json.loads(file.read_text()) if file.is_file() else []
            except ValueError:  # torn by a machine crash (see _replace): start the record over
                self._history = []
        return self._history

    def epochs(self) -> int:
        return len(self.history())

    def answer(self, epoch: int) -> EpochAnswer | None:
        """The training's state after `epoch` epochs, if the record reaches that far."""
        history = self.history()
        if len(history) < epoch or not self._arrays_file(epoch).is_file():
            return None  # not trained that far, or that epoch's arrays were not kept
        weights, probs = self.epoch_arrays(epoch)
        return EpochAnswer(history=history[:epoch], top_weights=weights, val_probs=probs)

    def epoch_arrays(self, epoch: int) -> tuple[list[np.ndarray], np.ndarray]:
        """The head's weights and the val probabilities after `epoch`."""
        with np.load(self._arrays_file(epoch)) as archive:
            n_weights = int(archive["n_weights"])
            return [archive[f"w{i}"] for i in range(n_weights)], archive["probs"]

    def add_epoch(
        self, row: dict[str, float], weights: list[np.ndarray], val_probs: np.ndarray, *,
        keep_arrays: bool = True,
    ) -> None:
        """Records epoch `row["epoch"]`, the one after the last recorded (an epoch already on
        record was computed the same way before and is kept).

        Args:
            keep_arrays: also keep the head's weights and val probabilities after this epoch,
                which a config of exactly this many epochs can then be answered from. A
                training that shares no epochs (a random trial's head, which no other trial
                asks for) keeps them only for its own configs' epoch counts: every epoch's
                arrays cost a file write per head and epoch, and its history (every row) is
                all that resuming needs.
        """
        history = self.history()
        epoch = int(row["epoch"])
        if epoch > len(history) + 1:
            raise ValueError(f"epoch {epoch} after {len(history)} recorded epochs")
        self.path.mkdir(parents=True, exist_ok=True)
        file = self._arrays_file(epoch)
        if keep_arrays and not file.is_file():  # the arrays first: the history names them
            arrays = {f"w{i}": np.asarray(w) for i, w in enumerate(weights)}
            buffer = io.BytesIO()
            np.savez(buffer, n_weights=np.asarray(len(weights)), probs=val_probs, **arrays)
            _replace(file, buffer.getvalue())
        if epoch == len(history) + 1:
            self._history = [*history, dict(row)]
            _replace(self.path / "history.json", json.dumps(self._history).encode())

    def _arrays_file(self, epoch: int) -> Path:
        return self.path / f"e{epoch}.npz"


def _replace(path: Path, data: bytes) -> None:
    """Write-then-rename: atomic for readers and for a killed process. Not fsynced: the record
    is a cache that can be recomputed, and two fsyncs per head and epoch cost more than a small
    head's epoch. (Checkpoints, which resume depends on, are fsynced.)"""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
