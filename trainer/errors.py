"""The trainer's exceptions.

Bad input (`ConfigError`, `DataError`, `WeightsError`) is the user's to fix and stops before any
training starts. `TrainingDiverged` is a failure of one configuration: a search marks that trial
failed and goes on.
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


class TrainingDiverged(TrainerError):
    """The loss became NaN or infinite; this configuration cannot be trained."""
