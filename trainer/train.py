"""`train(config, data)`: one configuration, trained and scored on the validation split.

A frozen base on cached features trains on the compiled head engine, as a group of one
(trainer.heads.group_train); anything else (fine-tuning, augmentation, early stopping) fits with
Keras (trainer.heads.fit). After every epoch the validation split is scored and the numbers go to
the caller, who may stop the run by raising (that is how a search prunes).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.heads.fit import train_with_fit
from trainer.heads.fit_checkpoint import FitCheckpointer
from trainer.heads.group_train import train_group
from trainer.heads.grouping import shareable
from trainer.heads.inputs import check_inputs
from trainer.heads.result import TrainResult, build_model

__all__ = ["EpochCallback", "TrainResult", "build_model", "train"]

EpochCallback = Callable[[int, dict[str, float]], None]


def train(
    config: TrainConfig,
    data: Dataset,
    on_epoch_end: EpochCallback | None = None,
    *,
    share_epochs_to: int | None = None,
    resume: bool = True,
) -> TrainResult:
    """Trains `config` on `data.train`, scoring `data.val` after every epoch.

    Args:
        config: the configuration.
        data: a dataset loaded at `config.image_size`.
        on_epoch_end: called as `on_epoch_end(epoch, metrics)` after each epoch (1-based); an
            exception it raises ends training and propagates unchanged.
        share_epochs_to: the largest epoch count of this config's group (configs equal but for
            `epochs`). When epochs can be shared (frozen base, no early stopping), training runs
            to that count once and records every epoch; later trainings of the group are answered
            from the record, with `on_epoch_end` replayed epoch by epoch.
        resume: checkpoint every finished epoch under `<cache_dir>/checkpoints/` and continue a
            killed training of the same config and data after its last finished epoch (the
            restored epochs are replayed to `on_epoch_end` first).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
        ConfigError / DataError: the data does not fit the config.
    """
    start = time.perf_counter()
    check_inputs(config, data)
    if shareable(config):  # frozen base, cached features: the compiled head engine
        callback = None
        if on_epoch_end is not None:
            def callback(_index, epoch, metrics):
                on_epoch_end(epoch, metrics)
        (outcome,) = train_group([config], data, callback, share_epochs_to=share_epochs_to,
                                 resume=resume)
        if isinstance(outcome, BaseException):
            raise outcome
        outcome.seconds = time.perf_counter() - start
        return outcome
    checkpointer = FitCheckpointer(data, config) if resume else None
    return train_with_fit(config, data, on_epoch_end, config.epochs, checkpointer, start)
