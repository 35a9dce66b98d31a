"""The trainer's exceptions.

Bad input (`ConfigError`, `DataError`, `WeightsError`) is the user's to fix and stops before any
training starts. `TrainingDiverged` and `HeadFailed` are failures of one configuration: a search
marks that trial failed and goes on. `DiskFull` stops a run (exit 1) before a cache is half-written.
"""

from __future__ import annotations


class TrainerError(Exception):
    """Base class of every error the trainer raises on purpose."""


class ConfigError(TrainerError, ValueError):
    """A `TrainConfig` or `DataConfig` field holds a value the trainer cannot use."""

    def __init__(self, field: str, expected: str, found: object) -> None:
        self.field = field
        self.expected = expected
        self.found = found
        super().__init__(f"{field}: expected {expected}, but got {found!r}")


class DataError(TrainerError):
    """The dataset on disk is missing, malformed or unusable."""


class WeightsError(TrainerError):
    """VGG16 weights cannot be found or loaded."""


class DiskFull(TrainerError):
    """A cache cannot be written: its folder's file system has too little free space.

    A runtime failure (exit code 1), not bad input: free space, or point ``cache_dir`` elsewhere.
    """

    def __init__(self, folder: object, needed: int, free: int, what: str) -> None:
        self.folder, self.needed, self.free = folder, needed, free
        super().__init__(
            f"{folder}: not enough free space for {what}: it needs {needed:,} bytes, "
            f"{free:,} are free (free some space or set cache_dir elsewhere)"
        )


class TrainingDiverged(TrainerError):
    """The loss became NaN or infinite; this configuration cannot be trained."""


class HeadFailed(TrainerError):
    """One head's training raised (out of memory at its batch size or width, an error in its
    own arithmetic) when trained alone: the failure is this configuration's, not its
    group-mates' (trainer.heads.group_train re-runs a failed pass head by head to find it).
    `__cause__` is the original exception."""

    def __init__(self, error: BaseException, *, batch_size: int, epoch: int,
                 head_width: int) -> None:
        what = "out of memory" if is_out_of_memory(error) else "its training raised"
        detail = " ".join(str(error).split())[:300]
        super().__init__(f"{what} at batch_size {batch_size} (head_width {head_width}, epoch "
                         f"{epoch}): {type(error).__name__}: {detail}")
        self.__cause__ = error


def is_out_of_memory(error: BaseException) -> bool:
    """Python's MemoryError, or TensorFlow's ResourceExhaustedError (a GPU's out of memory),
    told by name: this module imports no TensorFlow."""
    return isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"
