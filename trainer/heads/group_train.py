"""`train_group(configs, data)`: k frozen-base heads trained together on cached features; the
machinery behind `trainer.train_many` (trainer.train), which callers use.

Configs of one group (equal `batch_key`: same data, class weights, ...; they may differ in
`grouping.FREE_IN_GROUP`: `epochs`, `batch_size` and the head settings `HeadConfig` marks free,
such as `learning_rate`, `head_width`, `dropout`, `weight_decay`, `label_smoothing`, `seed`)
see the faces in their seed's order each epoch. Those of one batch size train in one pass over
the batches, each head on its seed's (trainer.heads.passes, trainer.heads.engine); the passes of
different batch sizes run at once, each on its own thread, while their epochs are stored and
reported on the caller's (`passes.side_by_side`). Configs equal but for `epochs` share one
track: it trains once, to the largest count asked, and each config hears of its own epochs only.
Every finished epoch goes to the track's epoch record (trainer.heads.epoch_record: its arrays
only at the configs' own epoch counts, unless `share_epochs_to` says other configs will ask)
and, with `resume`, every CHECKPOINT_EVERY_S to its checkpoint (trainer.heads.checkpoint), so a
killed training resumes after its last checkpointed epoch, replaying the finished ones to the
caller first. A head that raises fails alone: a pass whose program raises is re-run head by head
for that epoch (`passes.Pass.next_epoch`), so one configuration's out-of-memory or bad
arithmetic costs only itself.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np
from cachetools import LRUCache

from trainer import settings
from trainer.config import TrainConfig
from trainer.data.dataset import Dataset
from trainer.errors import TrainingDiverged
from trainer.heads import engine as engine
from trainer.heads.checkpoint import (
    Checkpoint,
    drop_checkpoint,
    head_checkpoint_path,
    load_checkpoint,
    save_checkpoint,
)
from trainer.heads.epoch_record import EpochRecord
from trainer.heads.grouping import batch_key
from trainer.heads.head_config import HeadConfig
from trainer.heads.inputs import check_inputs, class_weight_for, head_features
from trainer.heads.passes import EpochDone, Pass, side_by_side
from trainer.heads.result import TrainResult, val_metrics
from trainer.metrics import epoch_metrics, evaluation_from_probs
from trainer.network.model import build_head
from trainer.runtime import seed_everything

GroupCallback = Callable[[int, int, dict[str, float]], None]
ResultCallback = Callable[[int, "TrainResult | BaseException"], None]


@dataclass
class _Member:
    index: int
    config: TrainConfig
    outcome: TrainResult | BaseException | None = None

    @property
    def alive(self) -> bool:
        return self.outcome is None


@dataclass
class _Track:
    """One head being trained, and the configs (equal but for `epochs`) waiting on it."""

    record: EpochRecord
    members: list[_Member]
    target: int
    spec: HeadConfig
    state: engine.HeadState | None = None
    epoch: int = 0
    start: int = 0
    trained: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    done: bool = False

    @property
    def config(self) -> TrainConfig:
        return self.members[0].config


def train_group(
    configs: list[TrainConfig],
    data: Dataset,
    on_epoch_end: GroupCallback | None = None,
    *,
    share_epochs_to: int | None = None,
    resume: bool = True,
    on_result: ResultCallback | None = None,
) -> list[TrainResult | BaseException]:
    """Trains `configs` (one group) together; see the module docstring and ARCHITECTURE.md
    ("The epochs axis and group training").

    Returns one entry per config, in order: its TrainResult, or the exception that stopped it
    (raised by `on_epoch_end(index, epoch, metrics)`, TrainingDiverged, or HeadFailed: its head
    raised when trained alone, `passes.Pass.next_epoch`). KeyboardInterrupt and SystemExit
    propagate; checkpointed epochs stay checkpointed.

    `on_result(index, entry)` hears each config's entry as soon as it is final (when its head's
    training ends), on the caller's thread, while other heads may still train: the caller can
    record a finished config meanwhile. An exception it raises propagates.
    """
    start = time.perf_counter()
    keys = {batch_key(c) for c in configs}
    if not configs or None in keys or len(keys) != 1:
        raise ValueError("train_group needs configs of one group (equal, non-None batch_key)")
    for config in configs:
        check_inputs(config, data)
    first = configs[0]
    seed_everything(first.seed)
    x_train, x_val, feature_seconds = head_features(first, data)
    members = [_Member(i, c) for i, c in enumerate(configs)]
    tracks: dict[str, _Track] = {}
    for member in members:
        record = EpochRecord(data, member.config)
        target = max(member.config.epochs, share_epochs_to or 0)
        track = tracks.get(record.key)
        if track is None:
            track = tracks[record.key] = _Track(record, [], target,
                                                HeadConfig.from_config(member.config))
        track.members.append(member)
        track.target = max(track.target, target)
    run = _GroupRun(data, x_train, x_val, on_epoch_end, resume, start, feature_seconds,
                    every_epoch=share_epochs_to is not None, on_result=on_result)
    with ExitStack() as stack:
        for key in sorted(tracks):  # one order for every process: no lock-order deadlock
            stack.enter_context(tracks[key].record.lock())
        for track in tracks.values():
            run.prepare(track)
        run.train([t for t in tracks.values() if not t.done])
    return [m.outcome for m in members]


_inits: LRUCache = LRUCache(maxsize=64)


def _initial_weights(config: TrainConfig, shape: tuple, class_names: tuple) -> list[np.ndarray]:
    """`build_head`'s seeded initial weights (building a Keras head costs ~0.1 s; a study asks
    for the same few heads again and again). Keyed on the whole `HeadConfig`: a head's every
    setting, so no setting can be left out of the key."""
    key = (HeadConfig.from_config(config), tuple(shape), tuple(class_names))
    if key not in _inits:
        _inits[key] = build_head(config, shape, class_names).get_weights()
    return [np.array(w) for w in _inits[key]]


class _GroupRun:
    def __init__(self, data, x_train, x_val, on_epoch_end, resume, start, feature_seconds, *,
                 every_epoch: bool, on_result: ResultCallback | None):
        self.data = data
        self.on_result = on_result
        # Keep every epoch's arrays in the record (a grid's epochs axis: other configs are
        # answered from them), or only those of the members' own epoch counts.
        self.every_epoch = every_epoch
        self.y_val = np.asarray(data.val.labels)
        y_train = np.asarray(data.train.labels).astype("int32")
        self.n = len(y_train)
        self.x = engine.Tensors.of(x_train)
        self.xv = engine.Tensors.of(x_val)
        self.y = engine.Tensors.of(y_train, engine.tf.int32)
        self.x_shape = tuple(x_train.shape[1:])
        self.on_epoch_end = on_epoch_end
        self.resume = resume
        self.start = start
        self.feature_seconds = feature_seconds
        self._y_train = y_train
        self._weight_memo: dict[str, tuple] = {}
        self._started = time.monotonic()
        self._checkpointed: dict[int, float] = {}  # per pass (batch size): its last checkpoint

    def weights_for(self, config: TrainConfig):
        """Per-face loss weights (class_weight: balanced), as Keras' fit applies them."""
        found = self._weight_memo.get(config.class_weight)
        if found is None:
            table = class_weight_for(config, self._y_train)
            if table is None:
                w = np.ones(self.n, "float32")
            else:  # each class's weight cast to float32 once, then looked up per face
                lookup = np.zeros(max(table) + 1, "float32")
                lookup[list(table)] = [table[c] for c in table]
                w = lookup[self._y_train]
            found = self._weight_memo[config.class_weight] = (engine.Tensors.of(w), float(w.sum()))
        return found

    def prepare(self, track: _Track) -> None:
        """Answers configs from the record, restores the checkpoint, replays restored epochs."""
        record = track.record
        for member in track.members:
            answer = record.answer(member.config.epochs)
            if answer is not None:
                self._replay(member, answer.history)
                if member.alive:
                    member.outcome = self._result(member, track, answer.top_weights,
                                                  answer.val_probs, answer.history, trained=0)
        if not any(m.alive for m in track.members):
            track.done = True
            self._announce(track)
            return
        config = track.config
        track.state = engine.HeadState.fresh(_initial_weights(config, self.x_shape,
                                                              self.data.class_names))
        if self.resume:
            restored = self._restore(track)
            if restored:
                for member in track.members:
                    if member.alive:
                        self._replay(member, track.history)
                if not any(m.alive for m in track.members):
                    track.done = True
                    drop_checkpoint(self._ckpt(track))
                    self._announce(track)

    def _restore(self, track: _Track) -> bool:
        ckpt = load_checkpoint(self._ckpt(track))
        if ckpt is None or not 0 < ckpt.epoch <= track.record.epochs():
            return False
        shapes = [w.shape for w in track.state.weights]
        try:
            state = engine.HeadState(*[[ckpt.arrays[f"{p}{i}"] for i in range(4)]
                                       for p in ("w", "m", "v")])
        except KeyError:
            return False
        if [w.shape for w in state.weights] != shapes:
            return False
        track.state, track.epoch, track.start = state, ckpt.epoch, ckpt.epoch
        track.history = track.record.history()[: ckpt.epoch]
        return True

    def _ckpt(self, track: _Track):
        return head_checkpoint_path(self.data, track.record.key)

    def _replay(self, member: _Member, rows: list[dict[str, float]]) -> None:
        for row in rows[: member.config.epochs]:
            if not self._tell(member, row):
                return

    def _tell(self, member: _Member, row: dict[str, float]) -> bool:
        if self.on_epoch_end is None:
            return True
        try:
            self.on_epoch_end(member.index, int(row["epoch"]), dict(row))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # pruned (or the caller failed): this member stops
            member.outcome = exc
            return False
        return True

    def train(self, tracks: list[_Track]) -> None:
        """Epoch by epoch, the tracks of each batch size in one pass over the batches (`Pass`);
        passes of different batch sizes run at once (`side_by_side`)."""
        by_size: dict[int, list[_Track]] = {}
        for track in tracks:
            by_size.setdefault(track.config.batch_size, []).append(track)
        passes = [Pass(self, size, members) for size, members in sorted(by_size.items())]
        if len(passes) == 1:
            while (epoch := passes[0].next_epoch()) is not None:
                self._finish(epoch)
        elif passes:
            side_by_side(passes, self._finish)

    def _finish(self, done: EpochDone) -> None:
        """Stores, checkpoints and reports one pass's finished epoch (on the caller's thread)."""
        for track, error in done.failed:  # its members fail; the checkpoint goes with it
            for member in track.members:
                if member.alive:
                    member.outcome = error
            self._end(track)
        stored = []
        # Every head's epoch is on disk before anyone hears of it: a caller that dies in its
        # callback (or a kill then) loses no finished epoch of any member.
        for j, track in enumerate(done.tracks):
            row = {"epoch": done.epoch, "loss": float(done.loss[j]) / self.n,
                   "accuracy": float(done.hits[j]) / done.weight_sum}
            if self._store_epoch(track, row, done.states[j], done.probs[j]):
                stored.append((track, row, done.states[j], done.probs[j]))
        self._checkpoint_if_due(done.batch_size, [track for track, *_ in stored])
        for track, row, state, track_probs in stored:
            self._report_epoch(track, row, state, track_probs)

    def _store_epoch(self, track, row, state, probs) -> bool:
        epoch = row["epoch"]
        finite = all(np.all(np.isfinite(w)) for w in state.weights)
        if not (math.isfinite(row["loss"]) and finite and np.all(np.isfinite(probs))):
            error = TrainingDiverged(
                f"the training loss became {row['loss']} at epoch {epoch} "
                f"(learning_rate={track.spec.learning_rate}, "
                f"batch_size={track.config.batch_size})")
            for member in track.members:
                if member.alive:
                    member.outcome = error
            self._end(track)
            return False
        row.update(epoch_metrics(self.y_val, probs))
        track.state, track.epoch = state, epoch
        track.trained += 1
        track.history.append(row)
        keep = self.every_epoch or any(m.config.epochs == epoch for m in track.members)
        track.record.add_epoch(row, state.weights, probs, keep_arrays=keep)
        return True

    def _checkpoint_if_due(self, batch_size: int, tracks: list[_Track]) -> None:
        """Checkpoints these tracks' states when their pass's last checkpoint is
        CHECKPOINT_EVERY_S old (all of a pass's tracks at once: one clock for each pass, so that
        passes side by side each keep the interval)."""
        now = time.monotonic()
        last = self._checkpointed.get(batch_size, self._started)
        if not self.resume or now - last < settings.checkpoint_s():
            return
        self._checkpointed[batch_size] = now
        for track in tracks:
            if track.epoch < track.target:
                state = track.state
                parts = {"w": state.weights, "m": state.m, "v": state.v}
                arrays = {f"{p}{i}": a for p, group in parts.items() for i, a in enumerate(group)}
                save_checkpoint(self._ckpt(track), Checkpoint(track.epoch, arrays, track.history))

    def _report_epoch(self, track, row, state, probs) -> None:
        epoch = row["epoch"]
        for member in track.members:
            if member.alive and epoch <= member.config.epochs and self._tell(member, row):
                if epoch == member.config.epochs:
                    member.outcome = self._result(member, track, state.weights, probs,
                                                  track.history, track.trained)
        # A track whose configs were all stopped ends here; finished ones fill the record.
        if epoch >= track.target or not any(
            m.alive or isinstance(m.outcome, TrainResult) for m in track.members
        ):
            self._end(track)

    def _end(self, track: _Track) -> None:
        track.done = True
        drop_checkpoint(self._ckpt(track))
        # Results built mid-way: the track's epochs are charged once, to its longest member;
        # the shorter ones were answered from its record (epochs_trained 0, as a replay is).
        trained = [m for m in track.members
                   if isinstance(m.outcome, TrainResult) and m.outcome.epochs_trained]
        owner = max(trained, key=lambda m: m.config.epochs, default=None)
        for member in trained:
            member.outcome.epochs_trained = track.trained if member is owner else 0
            member.outcome.seconds = time.perf_counter() - self.start
        self._announce(track)

    def _announce(self, track: _Track) -> None:
        """Hands the ended track's members' outcomes, final now, to `on_result`."""
        if self.on_result is not None:
            for member in track.members:
                self.on_result(member.index, member.outcome)

    def _result(self, member, track, weights, probs, history, trained) -> TrainResult:
        config = member.config
        rows = [dict(r) for r in history[: config.epochs]]
        return TrainResult(
            config=config,
            history=rows,
            metrics=val_metrics(rows[-1]),
            best_epoch=config.epochs,
            top_weights=[np.array(w) for w in weights],
            class_names=self.data.class_names,
            seconds=time.perf_counter() - self.start,
            feature_seconds=self.feature_seconds,
            used_feature_cache=True,
            val_evaluation=evaluation_from_probs(self.y_val, probs, self.data.class_names),
            epochs_trained=trained,
            resumed_from_epoch=track.start,
        )
