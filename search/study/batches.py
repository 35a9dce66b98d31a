"""Which trials go to the trainer together: what the trainer says, applied to trials' params.

The trainer decides what can share work (issue 31, one seam): configurations of equal
`trainer.batch_key` may be handed to one `trainer.train_many` call, which trains them together
(how, is the trainer's business), and `trainer.batch_cost` says what such a call holds at once.
Search knows no more than that. It caps a call's cost at FER_SEARCH_MAX_GROUP: one worker holds
no more work than that at once (if it dies, that much goes back to the queue; on a small grid,
other workers are not left idle).

- `Batching(spec)`: a trial's key from its params, whether trials fit one call, and how many
  WAITING trials a grid claim looks at (`window`).
- `claim`: a grid's next batch of WAITING trials (grid_queue.claim_batch). Random and TPE
  studies ask trials and split them with the same `Batching` (search.study.ask_batch.split).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable, Sequence
from typing import Any

import optuna

import trainer
from search import settings
from search.spec.loader import StudySpec
from search.study import grid_queue
from search.trial.repeats import seed_configs


class Batching:
    """The trainer's `batch_key` and `batch_cost` on a study's params (configs memoised: a
    claim asks about the same few points again and again)."""

    def __init__(self, spec: StudySpec) -> None:
        self.spec = spec
        self._config_of = functools.lru_cache(maxsize=4096)(self._build_config)
        self._window: int | None = None

    def _config(self, params: dict[str, Any]):
        return self._config_of(tuple(sorted(params.items())))

    def _build_config(self, items: tuple):
        return self.spec.train_config(dict(items))

    def key(self, params: dict[str, Any]) -> Hashable | None:
        """The trainer's batch key of these params' config; None: the trial trains alone."""
        try:
            return trainer.batch_key(self._config(params))
        except Exception:  # params the trainer cannot key (a bad value): it trains, and fails,
            return None    # alone

    def fits(self, batch: Sequence[dict[str, Any]]) -> bool:
        """Whether trials of these params (of one key) may train in one call: their cost, as the
        trainer counts it, within FER_SEARCH_MAX_GROUP."""
        try:
            cost = trainer.batch_cost(self._trial_configs(batch))
        except Exception:
            return len(batch) <= 1
        return cost <= max(1, settings.max_group())

    def _trial_configs(self, batch: Sequence[dict[str, Any]]) -> list:
        """What these trials hand the trainer: each trial's config, or its seeds' with
        `repeats: N` (a trial costs its N heads, and its seeds never split over two calls: a
        claim or a split takes a trial whole)."""
        return [config for params in batch
                for config in seed_configs(self._config(params), self.spec.repeats)]

    def window(self) -> int:
        """How many queued points a grid claim looks at (and locks for its moment): about what
        one claim can take, the cap times the most grid points one unit of cost holds (the
        quickstart's 24 points cost 12: 2 a unit, 16 rows). A larger window locks rows that
        other workers' claims then skip."""
        if self._window is None:
            batches: dict[Hashable, list[dict[str, Any]]] = {}
            for index, params in enumerate(grid_queue.grid_points(self.spec)):
                key = self.key(params)
                batches.setdefault(("alone", index) if key is None else key, []).append(params)
            per_unit = max((math.ceil(len(points) / max(1, self._cost(points)))
                            for points in batches.values()), default=1)
            self._window = per_unit
        return max(1, settings.max_group()) * self._window

    def _cost(self, batch: Sequence[dict[str, Any]]) -> int:
        try:
            return trainer.batch_cost(self._trial_configs(batch))
        except Exception:
            return len(batch)


def claim(study: optuna.Study, storage, batching: Batching,
          limit: int | None = None) -> list[optuna.Trial]:
    """A grid's next batch of queued points, claimed for this process ([] when the queue is
    empty): trials of one key, while they fit (grid_queue.claim_batch).

    Args:
        limit: at most this many trials (what is left of `--n-trials`).
    """
    return grid_queue.claim_batch(study, storage, batching.key, batching.fits,
                                  max_trials=limit, window=batching.window())
