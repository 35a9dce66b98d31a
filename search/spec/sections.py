"""The ``space`` and ``train`` sections of a study spec: what is searched, what is fixed.

Every key of both is a `TrainConfig` field, and every searched value (each grid value, each
choice, both ends of each range) is checked by building a `TrainConfig` from it and the fixed
``train`` values, so the trainer's own rules reject a bad spec before any trial runs. A new
`TrainConfig` field is therefore searchable from a spec with no change here.

    space:
      learning_rate: [1.0e-4, 1.0e-3]             # a list: categorical / grid axis
      batch_size: {choices: [32, 64]}             # categorical
      epochs: {low: 5, high: 20, step: 5}         # int range (int ends, field not a float)
      dropout: {low: 0.0, high: 0.6}              # float range
      head_width: {low: 64, high: 1024, log: true}
    train: {image_size: 48}                       # fixed values
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from search.spec.params import Categorical, FloatRange, IntRange, Param
from search.spec.reader import At, NodeReader, is_int, is_number
from trainer.config import TrainConfig
from trainer.errors import ConfigError

_RANGE_KEYS = ("low", "high", "log", "step")
# With int ends a range is an int range, unless the field itself is a float: `{low: 1, high: 3}`
# for dropout or learning_rate must not silently sample only 1, 2, 3.
_FLOAT_FIELDS = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", float)
)


def read_train(r: NodeReader, value: object) -> dict[str, Any]:
    """The fixed `TrainConfig` values, checked by the trainer's own rules."""
    if value is None:
        return {}
    fields = TrainConfig.field_names()
    train = dict(r.mapping(value, ("train",), fields, what="a mapping of TrainConfig fields"))
    try:
        TrainConfig(**train)
    except ConfigError as error:
        raise r.error(("train", error.field), error.expected, error.found) from error
    return train


def read_space(
    r: NodeReader, value: object, sampler: str, train: dict[str, Any]
) -> tuple[Param, ...]:
    """The searched parameters, in spec order; a grid takes lists only."""
    space = r.mapping(
        value, ("space",), TrainConfig.field_names(),
        what="a mapping of TrainConfig fields to lists of values or ranges",
    )
    if not space:
        raise r.error(("space",), "at least one searched TrainConfig field", space)
    params = []
    for name, spec in space.items():
        if name in train:
            raise r.error(
                ("train", name),
                f"{name} either searched (space.{name}) or fixed (train.{name}), not both",
                train[name],
            )
        param, candidates = _param(r, name, spec, sampler)
        _check_with_trainer(r, name, candidates, train)
        params.append(param)
    return tuple(params)


def _param(
    r: NodeReader, name: str, value: object, sampler: str
) -> tuple[Param, list[tuple[At, Any]]]:
    """One searched field, and the values (with their paths) the trainer must accept."""
    at: At = ("space", name)
    if isinstance(value, list):
        return _categorical(r, name, value, at)
    if isinstance(value, dict) and "choices" in value:
        r.mapping(value, at, ("choices",))
        return _categorical(r, name, value["choices"], (*at, "choices"))
    if isinstance(value, dict):
        if sampler == "grid":
            raise r.error(at, "a list of values (sampler grid cannot search a range)", value)
        return _range(r, name, value, at)
    raise r.error(
        at,
        "a non-empty list of values, {choices: [...]} or a range {low, high, log, step}",
        value,
    )


def _categorical(
    r: NodeReader, name: str, values: object, at: At
) -> tuple[Categorical, list[tuple[At, Any]]]:
    if not isinstance(values, list) or not values:
        raise r.error(at, "a non-empty list of values", values)
    for index, item in enumerate(values):
        if not isinstance(item, str | int | float | bool):
            raise r.error((*at, index), "a number, string, true or false", item)
        # Equal values of one type would run the same configuration twice.
        if any(type(other) is type(item) and other == item for other in values[:index]):
            raise r.error((*at, index), "values that differ from each other", item)
    candidates = [((*at, index), item) for index, item in enumerate(values)]
    return Categorical(name, tuple(values)), candidates


def _range(
    r: NodeReader, name: str, value: dict[str, Any], at: At
) -> tuple[FloatRange | IntRange, list[tuple[At, Any]]]:
    spec = r.mapping(value, at, _RANGE_KEYS, required=("low", "high"))
    low = r.number(spec["low"], (*at, "low"))
    high = r.number(spec["high"], (*at, "high"))
    log = r.boolean(spec.get("log", False), (*at, "log"))
    if low > high:
        raise r.error(at, "low <= high", found_text=f"low={low!r}, high={high!r}")
    if log and low <= 0:
        raise r.error((*at, "low"), "a number > 0 (log: true samples in log space)", low)
    if log and "step" in spec:
        raise r.error(
            (*at, "step"), "no step with log: true (log and step exclusive)", spec["step"]
        )
    candidates = [((*at, "low"), low), ((*at, "high"), high)]
    if is_int(low) and is_int(high) and name not in _FLOAT_FIELDS:
        step = r.integer(spec.get("step", 1), (*at, "step"), 1)
        if (high - low) % step:
            raise r.error((*at, "step"), f"a step dividing high - low = {high - low}", step)
        return IntRange(name, low, high, step, log), candidates
    step = spec.get("step")
    if step is not None:
        if not is_number(step) or step <= 0:
            raise r.error((*at, "step"), "a number > 0, or null", step)
        count = (high - low) / step
        if not math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9):
            raise r.error((*at, "step"), f"a step dividing high - low = {high - low!r}", step)
        step = float(step)
    return FloatRange(name, float(low), float(high), log, step), candidates


def _check_with_trainer(
    r: NodeReader, name: str, candidates: list[tuple[At, Any]], train: dict[str, Any]
) -> None:
    """Builds a `TrainConfig` from each candidate value and the fixed values."""
    for at, value in candidates:
        try:
            TrainConfig(**{**train, name: value})
        except ConfigError as error:
            expected = error.expected if error.field == name else (
                f"{error.expected} (for {error.field})"
            )
            raise r.error(at, expected, error.found) from error
