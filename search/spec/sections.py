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

`Space` and `Train` are the pydantic types of the two sections (each shape on its own); `params`
applies the rules that join them (and the field's type with a range's ends) and builds the
`Param`s. (That a grid takes lists only is checked by the spec's top level, which knows the
sampler.)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Any

from pydantic import AfterValidator, Field, model_validator

from search.spec.params import Categorical, FloatRange, IntRange, Param
from search.spec.reader import At, Fault, Strict, is_int, is_number, unknown_key, validated
from trainer.config import TrainConfig
from trainer.errors import ConfigError

TRAIN_FIELDS = TrainConfig.field_names()
# With int ends a range is an int range, unless the field itself is a float: `{low: 1, high: 3}`
# for dropout or learning_rate must not silently sample only 1, 2, 3.
_FLOAT_FIELDS = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", float)
)
_SHAPES = "a non-empty list of values, {choices: [...]} or a range {low, high, log, step}"


def _field_name(key: Any) -> str:
    if key not in TRAIN_FIELDS:
        raise unknown_key((), key, TRAIN_FIELDS)
    return key


def _values(values: list[Any]) -> list[Any]:
    """A grid axis or a categorical's choices: scalars, each once."""
    if not values:
        raise Fault((), "a non-empty list of values", values)
    for index, item in enumerate(values):
        if not isinstance(item, str | int | float | bool):
            raise Fault((index,), "a number, string, true or false", item)
        # Equal values of one type would run the same configuration twice.
        if any(type(other) is type(item) and other == item for other in values[:index]):
            raise Fault((index,), "values that differ from each other", item)
    return values


class Choices(Strict):
    """``{choices: [...]}``."""

    choices: Annotated[list[Any], AfterValidator(_values)] = Field(
        description="a non-empty list of values"
    )


class Range(Strict):
    """``{low, high, log, step}``; whether it is an int or a float range, and so what its step
    must be, depends on the field searched (`params`)."""

    low: int | float = Field(description="a number")
    high: int | float = Field(description="a number")
    log: bool = Field(False, description="true or false")
    step: Any = None

    @model_validator(mode="after")
    def _ends(self) -> Range:
        if self.low > self.high:
            raise Fault((), "low <= high", found_text=f"low={self.low!r}, high={self.high!r}")
        if self.log and self.low <= 0:
            raise Fault(("low",), "a number > 0 (log: true samples in log space)", self.low)
        if self.log and "step" in self.model_fields_set:
            raise Fault(("step",), "no step with log: true (log and step exclusive)", self.step)
        return self


def _shape(value: Any) -> list[Any] | Choices | Range:
    if isinstance(value, list):
        return _values(value)
    if isinstance(value, dict):
        return validated(Choices if "choices" in value else Range, value)
    raise Fault((), _SHAPES, value)


def _not_empty(space: dict[str, Any]) -> dict[str, Any]:
    if not space:
        raise Fault((), "at least one searched TrainConfig field", space)
    return space


def _by_trainer(train: dict[str, Any]) -> dict[str, Any]:
    try:
        TrainConfig(**train)
    except ConfigError as error:
        raise Fault((error.field,), error.expected, error.found) from error
    return train


_FieldName = Annotated[Any, AfterValidator(_field_name)]
Space = Annotated[
    dict[_FieldName, Annotated[Any, AfterValidator(_shape)]], AfterValidator(_not_empty)
]
Train = Annotated[dict[_FieldName, Any], AfterValidator(_by_trainer)]


def params(
    space: dict[str, list[Any] | Choices | Range], train: dict[str, Any]
) -> tuple[Param, ...]:
    """The searched parameters, in spec order.

    Raises:
        Fault: a field both searched and fixed, a step that does not fit the range, or a value
            the trainer rejects (with the fixed values).
    """
    result = []
    for name, shape in space.items():
        at: At = ("space", name)
        if name in train:
            raise Fault(
                ("train", name),
                f"{name} either searched (space.{name}) or fixed (train.{name}), not both",
                train[name],
            )
        if isinstance(shape, Range):
            param: Param = _range(name, shape, at)
            candidates = [((*at, "low"), shape.low), ((*at, "high"), shape.high)]
        else:
            values, where = (shape.choices, (*at, "choices")) if isinstance(shape, Choices) \
                else (shape, at)
            param = Categorical(name, tuple(values))
            candidates = [((*where, index), item) for index, item in enumerate(values)]
        _check_with_trainer(name, candidates, train)
        result.append(param)
    return tuple(result)


def _range(name: str, spec: Range, at: At) -> FloatRange | IntRange:
    low, high = spec.low, spec.high
    if is_int(low) and is_int(high) and name not in _FLOAT_FIELDS:
        step = spec.step if "step" in spec.model_fields_set else 1
        if not is_int(step) or step < 1:
            raise Fault((*at, "step"), "an integer >= 1", step)
        if (high - low) % step:
            raise Fault((*at, "step"), f"a step dividing high - low = {high - low}", step)
        return IntRange(name, low, high, step, spec.log)
    step = spec.step
    if step is not None:
        if not is_number(step) or step <= 0:
            raise Fault((*at, "step"), "a number > 0, or null", step)
        count = (high - low) / step
        if not math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9):
            raise Fault((*at, "step"), f"a step dividing high - low = {high - low!r}", step)
        step = float(step)
    return FloatRange(name, float(low), float(high), spec.log, step)


def _check_with_trainer(
    name: str, candidates: list[tuple[At, Any]], train: dict[str, Any]
) -> None:
    """Builds a `TrainConfig` from each candidate value and the fixed values."""
    for at, value in candidates:
        try:
            TrainConfig(**{**train, name: value})
        except ConfigError as error:
            expected = error.expected if error.field == name else (
                f"{error.expected} (for {error.field})"
            )
            raise Fault(at, expected, error.found) from error
