"""A configuration's repeats, as numbers a person can weigh: mean, spread, and "within the noise".

A spec with ``repeats: N`` trains each configuration with N seeds (search.trial.repeats); the
trial's value is their mean and its user attrs keep each seed's value (search.contracts'
``REPEAT_*`` names). This module computes those numbers (`spread_of`, `representative`) and
reads them back (`recorded`) for the leaderboard (`fer-search run`, `fer-search status`), the
study report and promotion. It sits in `tracking` so that all of them may import it.

Within the noise: configuration c is within the noise of the best b when the difference of their
means is at most the standard error of that difference,

    |mean_b - mean_c| <= sqrt(s_b**2 / n_b + s_c**2 / n_c)

(s: the sample standard deviation of a configuration's seeds' values, ddof 1; n: its seeds).
It is a plain one-standard-error rule, not a significance test: a configuration so marked may
well be as good as the best, and more seeds would be needed to tell them apart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from search.contracts import (
    REPEAT_MAX_ATTR,
    REPEAT_MIN_ATTR,
    REPEAT_REPRESENTATIVE_ATTR,
    REPEAT_SEEDS_ATTR,
    REPEAT_STD_ATTR,
    REPEAT_VALUES_ATTR,
    is_added,
)

WITHIN_NOISE = "within noise"
LEGEND = ("mean ± std over each configuration's seeds (sample std); within noise: the "
          "difference from the best mean is at most the standard error of that difference, "
          "sqrt(s_best²/n_best + s²/n), so more seeds would be needed to tell the two apart")


@dataclass(frozen=True)
class Spread:
    """One configuration's seeds and their values (in seed order), and what they sum up to."""

    seeds: tuple[int, ...]
    values: tuple[float, ...]

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return mean_of(self.values)

    @property
    def std(self) -> float:
        """The sample standard deviation (ddof 1); 0 for one seed."""
        if self.n < 2:
            return 0.0
        mean = self.mean
        return math.sqrt(math.fsum((v - mean) ** 2 for v in self.values) / (self.n - 1))

    @property
    def low(self) -> float:
        return min(self.values)

    @property
    def high(self) -> float:
        return max(self.values)

    @property
    def representative(self) -> int:
        """The seed whose value is closest to the mean (the lowest such seed on a tie): the
        configuration's typical training, not its luckiest one."""
        mean = self.mean
        return min(zip(self.seeds, self.values, strict=True),
                   key=lambda sv: (abs(sv[1] - mean), sv[0]))[0]

    def value_of(self, seed: int) -> float:
        return self.values[self.seeds.index(seed)]

    def attrs(self) -> dict[str, object]:
        """The trial's user attrs (search.contracts' REPEAT_* names)."""
        return {REPEAT_SEEDS_ATTR: list(self.seeds), REPEAT_VALUES_ATTR: list(self.values),
                REPEAT_STD_ATTR: self.std, REPEAT_MIN_ATTR: self.low,
                REPEAT_MAX_ATTR: self.high, REPEAT_REPRESENTATIVE_ATTR: self.representative}

    def text(self, digits: int = 4) -> str:
        """``0.4123 ± 0.0120``."""
        return f"{self.mean:.{digits}f} ± {self.std:.{digits}f}"


def mean_of(values: Sequence[float]) -> float:
    """The mean a repeats trial reports (math.fsum: no order-dependent round-off)."""
    return math.fsum(values) / len(values)


def recorded(trial) -> Spread | None:
    """The spread a trial recorded, or None: it trained one seed (or recorded no repeats)."""
    seeds = trial.user_attrs.get(REPEAT_SEEDS_ATTR)
    values = trial.user_attrs.get(REPEAT_VALUES_ATTR)
    if not seeds or not values or len(seeds) != len(values):
        return None
    return Spread(tuple(int(s) for s in seeds), tuple(float(v) for v in values))


def within_noise(best: Spread, other: Spread) -> bool:
    """Whether `other`'s mean differs from `best`'s by at most the standard error of the
    difference (see the module docstring)."""
    error = math.sqrt(best.std ** 2 / best.n + other.std ** 2 / other.n)
    return abs(best.mean - other.mean) <= error


def marks(trials: Sequence, best) -> dict[int, str]:
    """Per trial number: ``best`` for `best`, ``within noise`` for a trial whose configuration
    is within the noise of it, else ''. Empty when the best recorded no repeats."""
    top = recorded(best) if best is not None else None
    if top is None:
        return {}
    found: dict[int, str] = {}
    for trial in trials:
        spread = recorded(trial)
        if trial.number == best.number:
            found[trial.number] = "best"
        elif spread is not None and within_noise(top, spread):
            found[trial.number] = WITHIN_NOISE
        else:
            found[trial.number] = ""
    return found


def value_text(trial, digits: int = 4) -> str:
    """A trial's value as the leaderboard shows it: ``mean ± std`` for repeats, else the value."""
    if trial.value is None:
        return ""
    spread = recorded(trial)
    return spread.text(digits) if spread is not None else f"{trial.value:.{digits}f}"


def ranked(trials: Sequence, maximize: bool) -> list:
    """The study's own complete trials (never a warm start's), best first."""
    own = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None
           and not is_added(t)]
    return sorted(own, key=lambda t: t.value, reverse=maximize)


def report_lines(trials: Sequence, maximize: bool, metric: str, most: int = 10) -> list[str]:
    """The study report's table of the best configurations with their spread and marks, and
    its legend; [] when the best recorded no repeats."""
    shown = ranked(trials, maximize)[:most]
    if not shown or recorded(shown[0]) is None:
        return []
    marked = marks(shown, shown[0])
    lines = [f"### Top configurations ({metric}, mean ± std over seeds)", "",
             "| rank | trial | mean ± std | min | max | seeds | vs best |",
             "|---|---|---|---|---|---|---|"]
    for rank, trial in enumerate(shown, 1):
        spread = recorded(trial)
        if spread is None:
            lines.append(f"| {rank} | {trial.number} | {trial.value:.4f} | | | 1 | |")
            continue
        lines.append(f"| {rank} | {trial.number} | {spread.text()} | {spread.low:.4f} | "
                     f"{spread.high:.4f} | {spread.n} | {marked.get(trial.number, '')} |")
    lines += ["", f"Legend: {LEGEND}.", ""]
    return lines
