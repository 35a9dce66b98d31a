"""`HeadConfig`: what one trained head is, the single definition every head cache is keyed on.

A head's settings are fields here, named like the `TrainConfig` fields they come from. Each field
says, in its metadata, how it acts:

- `static`: it shapes what is compiled. The head engine compiles one program per tuple of static
  settings (trainer.heads.engine), and a pooled Keras head is compiled for them
  (trainer.heads.keras_pool); `program_key()` and `build_key()` are made of these fields, so
  both caches tell heads apart by every one of them.
- runtime (not static): an input fed to a compiled program per head (the engine feeds each as a
  per-head tensor), reset by the Keras pool before each training (the learning rate is assigned,
  the seed's initial weights and dropout state are restored from a freshly built head).
- `switch` (runtime settings only): whether it is on (non-zero) is static, its value is fed at
  run time. A program per on/off, so a head with it off pays nothing for its ops (a Python `if`
  skips them) and keeps its numbers bit for bit, while heads with any non-zero values share one
  program: a random search over a float range would otherwise trace a program per value. A
  built Keras layer bakes the value in (Keras' `Dropout(rate)`), so the Keras pool keys on the
  value itself (`build_key`).
- `shape` (static settings only): a size the engine's programs leave open (variables of
  unknown size in that dimension, the kernels run on the actual sizes), so `program_key()`
  omits it and one program serves heads of every width: a random search draws a new width per
  trial, and tracing a program per set of widths (~0.4 s) cost as much as the heads' training.
  The Keras pool builds per value (`build_key` keeps it).
- `free`: heads of one group may differ in it (trainer.heads.grouping.FREE_IN_GROUP): each head
  of a group's program has its own.

Keys are computed from the fields, so a new field cannot be left out of one. No TensorFlow here:
the grid queue groups trials before anything is trained.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from trainer.config import TrainConfig


def _setting(*, static: bool, free: bool, switch: bool = False, shape: bool = False) -> Any:
    return field(metadata={"static": static, "free": free, "switch": switch, "shape": shape})


@dataclass(frozen=True)
class HeadConfig:
    """One head: its hidden width, dropout rate, weight decay, label smoothing, hidden
    activation, learning rate and seed.

    Static fields first, in the order they sort a group's heads (trainer.heads.group_train),
    then switched ones.
    """

    # A shape: a built Keras head is built per width, but the engine's variables leave this
    # dimension open, so one program serves heads of any widths (`program_key` omits it).
    head_width: int = _setting(static=True, free=True, shape=True)
    # Each head its own rate and its own mask stream (a function of its seed and the step:
    # trainer.heads.engine), so heads differing only in dropout train in one pass.
    dropout: float = _setting(static=False, free=True, switch=True)
    weight_decay: float = _setting(static=True, free=True)
    label_smoothing: float = _setting(static=True, free=True)
    activation: str = _setting(static=True, free=True)  # trainer.network.model.head_activation
    learning_rate: float = _setting(static=False, free=True)
    # Its initial weights, its dropout stream and its faces' order per epoch (a program feeds
    # each head its own seed's batches: trainer.heads.engine), so a study's repeats of one
    # configuration, seeds s..s+N-1, train in one pass.
    seed: int = _setting(static=False, free=True)

    @classmethod
    def from_config(cls, config: TrainConfig) -> HeadConfig:
        """The head `config` trains (each field read from the config field of its name)."""
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(cls)})

    @classmethod
    def runtime_fields(cls) -> tuple[dataclasses.Field, ...]:
        """The fields fed to a compiled program per head, in declaration order."""
        return tuple(f for f in dataclasses.fields(cls) if not f.metadata["static"])

    @classmethod
    def free_in_group(cls) -> tuple[str, ...]:
        """The names of the settings heads of one group may differ in."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata["free"])

    def program_key(self) -> tuple[tuple[str, Any], ...]:
        """The static settings but shapes as (name, value) pairs, then the switched ones as
        (name, on): what compiled programs are keyed on (heads equal in it share them)."""
        return (*((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                  if f.metadata["static"] and not f.metadata["shape"]),
                *self.switches().items())

    def switches(self) -> dict[str, bool]:
        """Each switched runtime setting: whether it is on (non-zero), which a program compiles
        in; its value is fed at run time."""
        return {f.name: getattr(self, f.name) > 0 for f in dataclasses.fields(self)
                if f.metadata["switch"]}

    def build_key(self) -> tuple[tuple[str, Any], ...]:
        """The settings a built Keras head bakes in, as (name, value) pairs: the static ones and
        the switched ones' values (all but those the Keras pool resets: learning rate, seed).
        What pooled Keras heads are keyed on."""
        return tuple((f.name, getattr(self, f.name)) for f in dataclasses.fields(self)
                     if f.metadata["static"] or f.metadata["switch"])

    def static(self) -> HeadConfig:
        """This head with its runtime settings and shapes blanked (None): all a compiled
        program is built from (with `switches`), so it cannot keep the learning rate, seed,
        dropout rate or width of the head it was first built for."""
        return dataclasses.replace(self, **{f.name: None for f in dataclasses.fields(self)
                                            if not f.metadata["static"] or f.metadata["shape"]})

    @property
    def plain_targets(self) -> bool:
        """True when `targets` are the one-hot labels themselves (a loss may read them sparse)."""
        return self.label_smoothing == 0

    def targets(self, onehot):
        """The cross-entropy targets of this head for one-hot labels (a TensorFlow or Keras
        tensor, batch x classes): smoothed, onehot * (1 - s) + s / classes, when its
        label_smoothing s > 0; else the one-hot labels themselves (no op added)."""
        if self.plain_targets:
            return onehot
        s = self.label_smoothing
        return onehot * (1.0 - s) + s / onehot.shape[-1]
