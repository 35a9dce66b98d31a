"""Which trainings can share work, decided from their configs alone (no TensorFlow here, so a
search can choose what to hand to one `trainer.train_many` before anything is trained).

- `batch_key` (public): configs with equal keys may go to one `train_many` call, which trains
  them together; None: this config trains alone. Such configs see the same faces in the same
  order each epoch, so the trainer trains them in one pass over the batches per batch size, the
  passes of different batch sizes at once (trainer.heads.group_train, trainer.heads.passes).
- `batch_cost` (public): what such a call costs, in heads trained at once. Configs equal but
  for `epochs` are one head (`track_key`: one track, trained once to the largest count).
- `shareable`: epochs can be recorded and answered again (trainer.heads.epoch_record), and the head
  trains on the compiled engine (trainer.heads.engine).
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from trainer.config import TrainConfig
from trainer.heads.head_config import HeadConfig

# What may differ inside a group: the head settings marked free in `HeadConfig` (each head of a
# group's program has its own: learning rate and Adam, width, dropout rate and mask, weight
# decay, seed and its faces' order, ...); `epochs` only says how far a head's track is
# followed; `batch_size` says which pass a head is in (the faces' order per epoch is the
# seed's, whatever the batch size).
FREE_IN_GROUP = ("epochs", "batch_size", *HeadConfig.free_in_group())


def shareable(config: TrainConfig) -> bool:
    """Epochs can be shared when the base is frozen, inputs are cached features and nothing but
    the epoch count decides how training unfolds (early stopping would)."""
    return (
        config.trainable_blocks == 0
        and config.uses_feature_cache
        and config.early_stopping_patience == 0
    )


def batch_key(config: TrainConfig) -> Hashable | None:
    """Configs with equal keys may be handed to one `trainer.train_many` call, which trains
    them together; None: this one trains alone (fine-tuning, augmentation or early stopping
    decide their own batches or length)."""
    return _key_without(config, FREE_IN_GROUP)


def batch_cost(configs: Sequence[TrainConfig]) -> int:
    """What training `configs` in one `train_many` call holds at once, in heads: configs equal
    but for `epochs` are one head (trained once, to the largest count); a config that trains
    alone is one. A caller caps a call by it (search: FER_SEARCH_MAX_GROUP)."""
    return len({track_key(c) or ("alone", i) for i, c in enumerate(configs)})


def track_key(config: TrainConfig) -> tuple | None:
    """Configs with equal keys are one head in `train_group` (they differ only in `epochs`);
    None: this one trains alone."""
    return _key_without(config, ("epochs",))


def _key_without(config: TrainConfig, free: tuple[str, ...]) -> tuple | None:
    """The config's fields but `free`, as a hashable key; None when it cannot share work."""
    if not shareable(config):
        return None
    return tuple(sorted((k, v) for k, v in config.to_dict().items() if k not in free))
