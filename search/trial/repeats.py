"""Repeats: one configuration trained with N seeds, one Optuna trial (the spec's ``repeats: N``).

A trial whose config has seed s trains seeds s, s+1, ..., s+N-1 (`seed_configs`), all handed
to the trainer in the trial's one call (`trainer.train_many`, with its pass-mates' seeds: a
batch keeps each trial's seeds together, search.study.batches), so they train in the same
pass: `seed` is free in a group (each head on its own seed's batches: trainer.heads.engine).

The trainer calls back per config; a trial's `Gather` joins its seeds' callbacks:

- epoch by epoch, the mean over the seeds of every metric, once each seed has finished that
  epoch: what the trial reports to Optuna (pruning) and keeps as its history. A trial that its
  callback stops (pruned, past its deadline) stops every one of its seeds, each at its next
  epoch;
- at the end, one entry: a `Repeated` (every seed a TrainResult), or one exception: the trial's
  own stop, else the first failed seed's error (`SeedFailed`, whose reason names the seed;
  `cause` unwraps it for the trial's bookkeeping). A seed that fails fails its trial only: other
  trials of the pass are other configs of the call.

A `Repeated` trial's value is the mean of its seeds' metric (search.tracking.spread); `record`
writes the spread to the trial's user attrs and MLflow run, with every seed's weights. The
trial's own weights, evaluation and per-class scores are its representative seed's (the seed
whose value is closest to the mean), which is what `promote` registers. Answering from the epoch
record and resuming from a checkpoint happen per seed config, inside the trainer, as for any
config. A trial of one seed (``repeats: 1``) passes through untouched.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import trainer
from search.tracking.runs import Tracker, seed_weights_artifact
from search.tracking.spread import Spread, mean_of
from trainer.config import TrainConfig


def seed_configs(config: TrainConfig, repeats: int) -> list[TrainConfig]:
    """The configs one trial trains: `config` with seeds s, s+1, ..., s+repeats-1 (s: its
    seed); `[config]` itself for one repeat."""
    if repeats <= 1:
        return [config]
    return [config.replace(seed=config.seed + j) for j in range(repeats)]


# Errors that stop a study rather than a trial (search.trial.runner.FATAL): passed on as
# they are, so the runner recognises them.
FATAL_KINDS = (trainer.DataError, trainer.WeightsError, trainer.ConfigError)


class SeedFailed(Exception):
    """One seed of a repeats trial failed: the trial fails, judged by the seed's own `error`,
    with the reason that error gives, after `prefix` (naming the seed): `cause`."""

    def __init__(self, seed: int, repeats: int, error: BaseException) -> None:
        self.seed = seed
        self.error = error
        self.prefix = f"seed {seed} (one of {repeats} repeats): "
        super().__init__(f"{self.prefix}{type(error).__name__}: {error}")


def cause(error: BaseException) -> tuple[BaseException, str]:
    """The error that decides how a trial ended, and what its reason starts with: a seed's
    failure is judged by the seed's own error, and its reason names the seed."""
    if isinstance(error, SeedFailed):
        return error.error, error.prefix
    return error, ""


@dataclass
class Repeated:
    """A repeats trial's seeds, all trained: `combined` is what the trial records as its
    training (mean metrics and history; the representative seed's weights and evaluation)."""

    results: list  # one TrainResult per seed, in seed order
    spread: Spread
    combined: trainer.TrainResult


class Gather:
    """One trial's seed configs in flight: their epochs averaged, their ends joined."""

    def __init__(self, configs: Sequence[TrainConfig], metric: str) -> None:
        self.configs = list(configs)
        self.metric = metric
        self.seeds = tuple(c.seed for c in self.configs)
        self._rows: dict[int, dict[int, dict[str, float]]] = {}  # epoch -> seed index -> row
        self._entries: list = [None] * len(self.configs)
        self._stop: BaseException | None = None
        self._joined: object | None = None  # the trial's entry, once every seed's is final

    @property
    def repeats(self) -> int:
        return len(self.configs)

    def epoch(self, j: int, epoch: int, metrics: dict[str, float]) -> dict[str, float] | None:
        """Seed `j`'s `epoch`: the mean row once every seed has finished it, else None.

        Raises:
            the trial's stop (pruned, past its deadline), once its callback raised it: this
            seed stops too.
        """
        if self._stop is not None:
            raise self._stop
        if self.repeats == 1:
            return metrics
        rows = self._rows.setdefault(epoch, {})
        rows[j] = metrics
        if len(rows) < self.repeats:
            return None
        del self._rows[epoch]
        return mean_row([rows[i] for i in range(self.repeats)])

    def stop(self, error: BaseException) -> None:
        """The trial's callback raised `error` at an epoch: its other seeds stop too."""
        self._stop = error

    def done(self, j: int, entry) -> object | None:
        """Seed `j`'s final entry; the trial's entry once every seed's is in (see `joined`)."""
        if self._entries[j] is None:
            self._entries[j] = entry
        if any(e is None for e in self._entries):
            return None
        return self.joined()

    def joined(self, entries: Sequence | None = None) -> object:
        """The trial's one entry: a `Repeated`, or the exception that ended it (its own stop,
        else the first failed seed's). One seed: its entry unchanged. Made once (`on_done`
        hears it first; the runner asks again after the call)."""
        for j, entry in enumerate(entries or ()):
            if self._entries[j] is None:
                self._entries[j] = entry
        if self._joined is None:
            self._joined = self._join(self._entries)
        return self._joined

    def _join(self, entries: list) -> object:
        if self.repeats == 1:
            return entries[0]
        if self._stop is not None:  # pruned or past its deadline: the trial's own end
            return self._stop
        fatal = next((e for e in entries if isinstance(e, FATAL_KINDS)), None)
        if fatal is not None:  # stops the study: passed on as it is
            return fatal
        for seed, entry in zip(self.seeds, entries, strict=True):
            if isinstance(entry, BaseException):
                return SeedFailed(seed, self.repeats, entry)
        return combine(list(entries), self.seeds, self.metric)


def mean_row(rows: Sequence[dict[str, float]]) -> dict[str, float]:
    """The mean of each metric over the seeds' rows of one epoch (`epoch` kept)."""
    first = rows[0]
    row = {key: mean_of([r[key] for r in rows]) for key in first if key != "epoch"}
    if "epoch" in first:
        row = {"epoch": first["epoch"], **row}
    return row


def combine(results: list, seeds: Sequence[int], metric: str) -> Repeated:
    """The seeds' results as one: mean metrics and per-epoch history (over the epochs every
    seed ran), the representative seed's weights, evaluation and epochs; epochs trained summed
    (0: every seed was answered from the record)."""
    spread = Spread(tuple(seeds), tuple(float(r.metrics[metric]) for r in results))
    chosen = results[spread.seeds.index(spread.representative)]
    epochs = min(len(r.history) for r in results)
    combined = dataclasses.replace(
        chosen,
        history=[mean_row([r.history[e] for r in results]) for e in range(epochs)],
        metrics={key: mean_of([r.metrics[key] for r in results]) for key in chosen.metrics},
        epochs_trained=sum(r.epochs_trained for r in results),
        resumed_from_epoch=max(r.resumed_from_epoch for r in results),
        seconds=max(r.seconds for r in results),
        feature_seconds=max(r.feature_seconds for r in results),
    )
    return Repeated(results, spread, combined)


def train_together(sessions: Sequence, data, share_epochs_to: int | None) -> list:
    """Every session's seed configs (`TrialSession.gather`) in one `trainer.train_many` call;
    one entry per session, in order: its `Repeated` or TrainResult, or the exception that ended
    it. Each session hears its seeds' mean epochs (`TrialSession.on_epoch_end`: report, prune,
    deadline) and is concluded as soon as its last seed is done, while the others train on."""
    owners = [(session, j) for session in sessions for j in range(session.gather.repeats)]

    def on_epoch(index: int, epoch: int, metrics: dict[str, float]) -> None:
        session, j = owners[index]
        try:
            mean = session.gather.epoch(j, epoch, metrics)  # raises the trial's stop, if any
            if mean is None:  # other seeds have yet to finish this epoch
                session.deadline.check()
            else:
                session.on_epoch_end(epoch, mean)
        except BaseException as stop:  # stops this seed, and the trial's others at their
            session.gather.stop(stop)  # next epoch
            raise

    def on_done(index: int, entry) -> None:
        session, j = owners[index]
        joined = session.gather.done(j, entry)
        if joined is not None:
            # Recorded (MLflow, tell) while the others still train; `run_many` concludes it
            # again after the training: that returns this outcome, or raises this error again.
            with contextlib.suppress(Exception):
                session.conclude(joined)

    configs = [config for session in sessions for config in session.gather.configs]
    entries = trainer.train_many(configs, data, on_epoch=on_epoch, on_done=on_done,
                                 share_epochs_to=share_epochs_to)
    joined, start = [], 0
    for session in sessions:
        joined.append(session.gather.joined(entries[start:start + session.gather.repeats]))
        start += session.gather.repeats
    return joined


def record(trial, tracker: Tracker, run_id: str, metric: str, repeated: Repeated) -> None:
    """A repeats trial's spread, before its tell: the trial's user attrs (search.contracts'
    REPEAT_* names) and its MLflow run (metrics `<metric>_std`, `_min`, `_max`,
    `<metric>_seed<s>` per seed; tags naming the seeds and the representative one), and every
    seed's weights (`trained/seed-<s>/`: promotion scores them all on test)."""
    spread = repeated.spread
    for key, value in spread.attrs().items():
        trial.set_user_attr(key, value)
    metrics = {f"{metric}_std": spread.std, f"{metric}_min": spread.low,
               f"{metric}_max": spread.high, f"{metric}_mean": spread.mean,
               **{f"{metric}_seed{s}": v for s, v in zip(spread.seeds, spread.values,
                                                         strict=True)}}
    tracker.log(run_id, metrics=metrics, step=repeated.combined.epochs_run, tags={
        "repeat_seeds": ",".join(map(str, spread.seeds)),
        "representative_seed": str(spread.representative),
    })
    for seed, result in zip(spread.seeds, repeated.results, strict=True):
        tracker.log_top_weights(run_id, result.top_weights, seed_weights_artifact(seed))
