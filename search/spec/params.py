"""Search-space parameters and their translation to Optuna.

A study's space is a tuple of `Param` objects, each named after the `TrainConfig` field it sets
(the same name is the Optuna parameter and the MLflow parameter). `search.spec.sections` builds and
validates them; this module only translates: to a grid (its points become the queue of a grid
study, `search.study.grid_queue`) and to ``trial.suggest_*`` calls.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

if TYPE_CHECKING:
    import optuna

# Optuna is imported where first used (`distribution`, for a warm start): reading a spec
# (`search.load_spec`, every command that takes one) imports no Optuna, ~0.4 s here.


@dataclass(frozen=True)
class Categorical:
    """One of a fixed set of values (a grid axis, or ``{choices: [...]}``).

    Attributes:
        name: the `TrainConfig` field.
        choices: the values, in spec order and with their YAML types (ints stay ints).
    """

    name: str
    choices: tuple[Any, ...]


@dataclass(frozen=True)
class FloatRange:
    """A float in ``[low, high]``.

    Attributes:
        name: the `TrainConfig` field.
        low: smallest value, inclusive.
        high: largest value, inclusive.
        log: sample uniformly in log space (``low > 0``).
        step: sample only ``low + k * step``; exclusive with ``log``.
    """

    name: str
    low: float
    high: float
    log: bool = False
    step: float | None = None


@dataclass(frozen=True)
class IntRange:
    """An integer in ``[low, high]``.

    Attributes:
        name: the `TrainConfig` field.
        low: smallest value, inclusive.
        high: largest value, inclusive.
        step: sample only ``low + k * step``.
        log: sample uniformly in log space (``low > 0``, ``step == 1``).
    """

    name: str
    low: int
    high: int
    step: int = 1
    log: bool = False


Param: TypeAlias = Categorical | FloatRange | IntRange


def grid_of(space: Iterable[Param]) -> dict[str, list[Any]]:
    """A grid's points, by axis: each parameter's values, in spec order (the grid queue's space).

    Args:
        space: categorical parameters only (a spec with ``sampler: grid`` guarantees this).

    Raises:
        ValueError: a parameter is a range, which has no finite grid.
    """
    grid: dict[str, list[Any]] = {}
    for param in space:
        if not isinstance(param, Categorical):
            raise ValueError(f"{param.name}: a grid needs a list of values, not a range")
        grid[param.name] = list(param.choices)
    return grid


def grid_size(space: Iterable[Param]) -> int:
    """How many points the grid over ``space`` has (the product of the axes' lengths).

    Raises:
        ValueError: a parameter is a range.
    """
    return math.prod(len(values) for values in grid_of(space).values())


def suggest(trial: optuna.trial.BaseTrial, param: Param) -> Any:
    """Asks ``trial`` for a value of ``param`` with the matching ``suggest_*`` call.

    Args:
        trial: a running Optuna trial.
        param: the parameter to sample.

    Returns:
        The sampled value: one of the choices, a float or an int.
    """
    if isinstance(param, Categorical):
        return trial.suggest_categorical(param.name, list(param.choices))
    if isinstance(param, FloatRange):
        return trial.suggest_float(
            param.name, param.low, param.high, step=param.step, log=param.log
        )
    if isinstance(param, IntRange):
        return trial.suggest_int(param.name, param.low, param.high, step=param.step, log=param.log)
    raise TypeError(f"not a search-space parameter: {param!r}")


def suggest_all(trial: optuna.trial.BaseTrial, space: Iterable[Param]) -> dict[str, Any]:
    """Samples every parameter of ``space``, in order; returns ``{name: value}``."""
    return {param.name: suggest(trial, param) for param in space}


def distribution(param: Param) -> optuna.distributions.BaseDistribution:
    """The Optuna distribution `suggest` draws ``param`` from (what a trial added to a study
    of this space must carry: `search.study.warm_start`)."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(param, Categorical):
        return CategoricalDistribution(list(param.choices))
    if isinstance(param, FloatRange):
        return FloatDistribution(param.low, param.high, log=param.log, step=param.step)
    if isinstance(param, IntRange):
        return IntDistribution(param.low, param.high, log=param.log, step=param.step)
    raise TypeError(f"not a search-space parameter: {param!r}")


def value_in(param: Param, value: Any) -> tuple[Any, str | None]:
    """``value`` as ``param`` would have drawn it (a categorical's own choice, a float range's
    float), and None; or None and why ``param`` cannot draw it, in words that are the same for
    every value out of the space (``learning_rate outside [0.0001, 0.01]``), so they count up.
    """
    name = param.name
    if isinstance(param, Categorical):
        for choice in param.choices:
            if choice == value and isinstance(choice, bool) == isinstance(value, bool):
                return choice, None
        return None, f"{name} not in [{', '.join(map(repr, param.choices))}]"
    number = isinstance(value, int | float) and not isinstance(value, bool) and \
        math.isfinite(value)
    if isinstance(param, IntRange):
        if not number or value != int(value):
            return None, f"{name} not an integer"
        value = int(value)
    elif not number:
        return None, f"{name} not a number"
    if not param.low <= value <= param.high:
        return None, f"{name} outside [{param.low:g}, {param.high:g}]"
    if param.step is not None:
        steps = (value - param.low) / param.step
        if not math.isclose(steps, round(steps), rel_tol=1e-9, abs_tol=1e-9):
            return None, f"{name} off the step {param.step:g} from {param.low:g}"
    return (float(value) if isinstance(param, FloatRange) else value), None
