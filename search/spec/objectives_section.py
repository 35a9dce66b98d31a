"""The ``objectives`` and ``constraints`` sections of a study spec: accuracy against speed.

    objectives:                       # two or more; replaces `metric` and `direction`
      - {name: val_accuracy, direction: maximize}
      - {name: latency_ms_b1, direction: minimize}
    constraints:                      # with one objective (`metric`) or several
      latency_ms_b1: {max: 20}        # ms per face at batch 1, on the machine that runs the study
      size_mb: {max: 60}
      val_macro_f1: {min: 0.2}

A name is a validation metric (``val_accuracy``, ``val_macro_f1``) or a cost of the exported model
(``trainer.COST_NAMES``: ``latency_ms_b1``, ``latency_ms_b32``, ``params``, ``size_mb``, measured
once per model shape by `trainer.model_costs`). An objective's ``direction`` defaults to
``maximize`` for a metric and ``minimize`` for a cost.

The rules that join these keys with the others (`joined`):

- ``objectives`` holds two or more distinct names, at least one of them a validation metric: the
  first metric among them is the study's ``metric`` (what `promote` checks the rebuilt model
  against and compares champions by on test); so ``metric`` and ``direction`` are not written
  beside ``objectives`` (one objective is the plain ``metric:``/``direction:`` form);
- with objectives or constraints the pruner is ``none``: Optuna prunes no multi-objective
  study, and a pruned trial's costs would decide nothing;
- each constraint has ``max``, ``min`` or both (``min <= max``).

What a study does with them: `search.trial.objectives` (costs measured, constraints set with
Optuna's `Trial.set_constraint`, several values told); `search.tracking.pareto` (the front);
`search.registry.choice` (which trial `promote` registers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, model_validator

from search.spec.reader import Fault, Strict, is_number, one_of, unknown_key, validated
from trainer.costs import COST_NAMES

METRICS = ("val_accuracy", "val_macro_f1")
DIRECTIONS = ("maximize", "minimize")
NAMES = METRICS + COST_NAMES
UNITS = {"latency_ms_b1": " ms", "latency_ms_b32": " ms", "size_mb": " MB"}


@dataclass(frozen=True)
class Objective:
    """One thing a study optimises: a metric or a cost, and which way."""

    name: str
    direction: str

    @property
    def is_cost(self) -> bool:
        return self.name in COST_NAMES


@dataclass(frozen=True)
class Constraint:
    """Bounds on one metric or cost; a trial that breaks one is infeasible."""

    name: str
    max: float | None = None
    min: float | None = None

    def values(self, value: float) -> dict[str, float]:
        """Optuna's constraint values for a trial measuring `value`, by label (``latency_ms_b1
        <= 20``): each <= 0 when that bound is met (`Trial.set_constraint`)."""
        found: dict[str, float] = {}
        if self.max is not None:
            found[f"{self.name} <= {self.max:g}"] = float(value) - self.max
        if self.min is not None:
            found[f"{self.name} >= {self.min:g}"] = self.min - float(value)
        return found

    @property
    def is_cost(self) -> bool:
        return self.name in COST_NAMES


def amount(name: str, value: float) -> str:
    """A measure as people read it: ``val_accuracy 0.4123``, ``latency_ms_b1 12.3 ms``,
    ``params 14.8M``."""
    if name == "params":
        return f"{name} {value / 1e6:.2f}M"
    if name in METRICS:
        return f"{name} {value:.4f}"
    return f"{name} {value:.3g}{UNITS.get(name, '')}"


# ------------------------------------------------------------------------------ the sections


def _name(value: Any) -> str:
    if value not in NAMES:
        raise Fault((), one_of(NAMES), value)
    return value


class _ObjectiveItem(Strict):
    """``{name, direction}``."""

    what: ClassVar[str] = "a mapping {name, direction}"
    name: Annotated[Any, AfterValidator(_name)] = Field(description=one_of(NAMES))
    direction: Literal[DIRECTIONS] | None = Field(
        None, description=one_of(DIRECTIONS) + " (default: maximize a metric, minimize a cost)"
    )

    def objective(self) -> Objective:
        default = "minimize" if self.name in COST_NAMES else "maximize"
        return Objective(self.name, self.direction or default)


def _objectives(items: list[Any]) -> list[Objective]:
    if len(items) < 2:
        raise Fault((), "a list of two or more {name, direction} (one objective: use metric "
                    "and direction)", items)
    found: list[Objective] = []
    for index, item in enumerate(items):
        try:
            objective = validated(_ObjectiveItem, item).objective()
        except Fault as fault:
            raise fault.under((index,)) from None
        if any(other.name == objective.name for other in found):
            raise Fault((index, "name"), "each name once", objective.name)
        found.append(objective)
    if not any(o.name in METRICS for o in found):
        raise Fault((), f"at least one validation metric ({', '.join(METRICS)}) among the "
                    "objectives: promote checks and compares models by it",
                    found_text=", ".join(o.name for o in found))
    return found


class _Bounds(Strict):
    """``{max, min}``, at least one."""

    what: ClassVar[str] = "a mapping {max, min}"
    max: int | float | None = Field(None, description="a number, or null")
    min: int | float | None = Field(None, description="a number, or null")

    @model_validator(mode="after")
    def _some(self) -> _Bounds:
        if self.max is None and self.min is None:
            raise Fault((), "max, min or both", found_text="neither")
        for key in ("max", "min"):
            value = getattr(self, key)
            if value is not None and not is_number(value):
                raise Fault((key,), "a finite number", value)
        if self.max is not None and self.min is not None and self.min > self.max:
            raise Fault((), "min <= max", found_text=f"min={self.min!r}, max={self.max!r}")
        return self


def _constraint_name(key: Any) -> str:
    if key not in NAMES:
        raise unknown_key((), key, NAMES)
    return key


def _constraints(section: dict[str, Any]) -> list[Constraint]:
    if not section:
        raise Fault((), "a mapping of metrics or costs to {max, min}", section)
    found = []
    for name, bounds in section.items():
        try:
            checked = validated(_Bounds, bounds)
        except Fault as fault:
            raise fault.under((name,)) from None
        found.append(Constraint(name, _float(checked.max), _float(checked.min)))
    return found


def _float(value: int | float | None) -> float | None:
    return None if value is None else float(value)


Objectives = Annotated[list[Any], AfterValidator(_objectives)]
Constraints = Annotated[
    dict[Annotated[Any, AfterValidator(_constraint_name)], Any], AfterValidator(_constraints)
]
OBJECTIVES_EXPECTED = "a list of {name, direction} (two or more)"
CONSTRAINTS_EXPECTED = "a mapping of metrics or costs to {max, min}"


# --------------------------------------------------------------------------- joined with others


@dataclass(frozen=True)
class Goals:
    """What the joined rules decide: the objectives (one: the metric) and the constraints."""

    metric: str
    direction: str
    objectives: tuple[Objective, ...]
    constraints: tuple[Constraint, ...]


def joined(study: Any) -> Goals:
    """The objectives and constraints of `study` (the top-level `_Study` model), after the
    rules that join them with ``metric``, ``direction`` and ``pruner``.

    Raises:
        Fault: ``metric`` or ``direction`` written beside ``objectives``, or a pruner with
            objectives or constraints.
    """
    objectives = tuple(study.objectives or ())
    constraints = tuple(study.constraints or ())
    if objectives:
        for key in ("metric", "direction"):
            if key in study.model_fields_set:
                raise Fault((key,), f"no {key} beside objectives (the first metric among the "
                            "objectives is the study's metric, with its direction)",
                            getattr(study, key))
    if (objectives or constraints) and (study.pruner or "none") != "none":
        raise Fault(("pruner",), "none with objectives or constraints (Optuna prunes no "
                    "multi-objective study, and a pruned trial's costs decide nothing)",
                    study.pruner)
    if not objectives:
        return Goals(study.metric, study.direction, (), constraints)
    first = next(o for o in objectives if o.name in METRICS)
    return Goals(first.name, first.direction, objectives, constraints)
