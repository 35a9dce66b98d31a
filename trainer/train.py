"""The trainer's two entry points: `train(config, data)`, one configuration, and
`train_many(configs, data)`, several, trained together where they can share work.

A frozen base on cached features trains on the compiled head engine, as a group of one
(trainer.heads.group_train); anything else (fine-tuning, augmentation, early stopping) fits with
Keras (trainer.heads.fit). After every epoch the validation split is scored and the numbers go to
the caller, who may stop the run by raising (that is how a search prunes).

`train_many` is the whole protocol a search needs to train trials together: it decides itself
which configurations share a pass (equal `batch_key`, trainer.heads.grouping), and calls back per
epoch and per finished configuration. A caller chooses what to hand over with `batch_key` (equal
keys may go to one call) and `batch_cost` (what a call holds at once, in heads); configs with
other keys are accepted too and train in turn. Each configuration computes exactly what `train`
computes for it alone, and one that raises fails alone (`HeadFailed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable, Sequence

from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.heads.fit import train_with_fit
from trainer.heads.fit_checkpoint import FitCheckpointer
from trainer.heads.group_train import train_group
from trainer.heads.grouping import batch_key, shareable
from trainer.heads.inputs import check_inputs
from trainer.heads.result import TrainResult, build_model

__all__ = ["DoneCallback", "EpochCallback", "ManyEpochCallback", "TrainResult", "build_model",
           "train", "train_many"]

EpochCallback = Callable[[int, dict[str, float]], None]
# train_many's callbacks: (index of the config in the call, epoch, metrics); (index, outcome).
ManyEpochCallback = Callable[[int, int, dict[str, float]], None]
DoneCallback = Callable[[int, "TrainResult | BaseException"], None]


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


def train_many(
    configs: Sequence[TrainConfig],
    data: Dataset,
    *,
    on_epoch: ManyEpochCallback | None = None,
    on_done: DoneCallback | None = None,
    share_epochs_to: int | None = None,
    resume: bool = True,
) -> list[TrainResult | BaseException]:
    """Trains `configs` on `data`, together where they can share work; one entry per config, in
    order: its TrainResult, or the exception that stopped it.

    Configs of equal `batch_key` train together (one pass per batch size, the passes side by
    side, configs equal but for `epochs` as one head); the others, and configs of other keys,
    train in turn. A config's numbers are those of `train(config, data)`.

    Args:
        on_epoch: called as `on_epoch(index, epoch, metrics)` after each of config `index`'s
            epochs (restored or recorded ones replayed first); an exception it raises stops
            that config only (pruned, past a deadline), and becomes its entry.
        on_done: called as `on_done(index, entry)` as soon as config `index`'s entry is final,
            while other configs may still train (the caller can record it meanwhile). An
            exception it raises propagates.
        share_epochs_to, resume: as `train`'s.

    An exception of one config's own training (TrainingDiverged; HeadFailed: its head raised
    when trained alone) is its entry; one that stops a whole pass (its data or weights cannot be
    used, a full disk) is the entry of every config of that pass not yet done.
    KeyboardInterrupt and SystemExit propagate; checkpointed epochs stay checkpointed.
    """
    entries: list[TrainResult | BaseException | None] = [None] * len(configs)
    batches: dict[Hashable, list[int]] = {}
    for index, config in enumerate(configs):
        key = batch_key(config)
        batches.setdefault(("alone", index) if key is None else key, []).append(index)

    def done(index: int, entry: TrainResult | BaseException) -> None:
        if entries[index] is not None:
            return  # final already, and heard
        entries[index] = entry
        if on_done is not None:
            try:
                on_done(index, entry)
            except Exception as error:
                raise _CallerError(error) from error

    for indices in batches.values():
        try:
            _train_batch([configs[i] for i in indices], indices, data, on_epoch, done,
                         share_epochs_to, resume)
        except _CallerError as raised:
            raise raised.error from None
        except Exception as error:  # the batch's own failure: each of its configs not done
            for index in indices:
                if entries[index] is None:
                    done(index, error)
    return entries


class _CallerError(Exception):
    """An exception of `train_many`'s `on_done`, carried out of the training unchanged."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


def _train_batch(configs, indices, data, on_epoch, done, share_epochs_to, resume) -> None:
    """Configs of one `batch_key` (or one that trains alone), their indices in the call."""
    def epoch_of(j: int, epoch: int, metrics: dict[str, float]) -> None:
        on_epoch(indices[j], epoch, metrics)

    if len(configs) == 1 and not shareable(configs[0]):
        try:
            result = train(configs[0], data, (lambda e, m: epoch_of(0, e, m)) if on_epoch else None,
                           share_epochs_to=share_epochs_to, resume=resume)
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as error:  # pruned, diverged, ...: this config's entry
            result = error
        done(indices[0], result)
        return
    entries = train_group(list(configs), data, epoch_of if on_epoch else None,
                          share_epochs_to=share_epochs_to, resume=resume,
                          on_result=lambda j, entry: done(indices[j], entry))
    for j, entry in enumerate(entries):  # each one heard once (`done` skips a final entry)
        done(indices[j], entry)
