"""What the terminal shows of a study's objectives and constraints (search.spec.objectives_section):
the value columns of `status`'s trials table, and the Pareto front in place of the leaderboard.

A plain study's value column is its metric, as before (with repeats: mean ± std). A study with
several objectives shows one column per objective; a constrained one adds the costs its
constraints bound and whether each trial meets them (`feasible`, or which bound it breaks).
"""

from __future__ import annotations

from collections.abc import Callable

from optuna.trial import FrozenTrial
from rich.table import Table

from search.contracts import METRIC_ATTR, feasible
from search.tracking import pareto
from search.tracking.spread import value_text
from trainer.costs import COST_NAMES

Column = tuple[str, Callable[[FrozenTrial], str]]


def value_columns(study, trials: list[FrozenTrial]) -> list[Column]:
    """The trials table's value columns, each a header and a cell of a trial."""
    named = pareto.names(study)
    if pareto.is_multi(study):
        columns: list[Column] = [(name, _objective(index, name))
                                 for index, name in enumerate(named)]
    else:
        columns = [(study.user_attrs.get(METRIC_ATTR, "value"), value_text)]
    if not pareto.constrained(trials):
        return columns
    bounded = [name for name in COST_NAMES if name not in named and any(
        label.startswith(f"{name} ") for t in trials for label in t.constraints)]
    columns += [(name, _cost(name)) for name in bounded]
    return [*columns, ("feasible", _feasible)]


def outcome_text(value) -> str:
    """A finished trial's value(s) on the progress line."""
    if isinstance(value, list | tuple):
        return " / ".join(f"{v:.4g}" for v in value)
    return f"{value:.4f}"


def front_table(study, top: int = 20) -> Table:
    """The Pareto front (own complete feasible trials no other one beats in every objective),
    then the trials the constraints rule out of it."""
    named = pareto.names(study)
    shown = pareto.rows(study)
    on_front = sum(1 for row in shown if row.feasible)
    table = Table(title=f"Pareto front: {study.study_name} ({on_front} trials; "
                        + ", ".join(f"{d.name.lower()} {n}"
                                    for d, n in zip(study.directions, named, strict=True)) + ")")
    table.add_column("trial", justify="right")
    for name in named:
        table.add_column(name, justify="right", style="bold")
    table.add_column("feasible")
    for row in shown[:top]:
        table.add_row(str(row.number),
                      *(pareto.value_cell(n, v) for n, v in zip(named, row.values, strict=True)),
                      "yes" if row.feasible else "no: breaks " + ", ".join(row.breaks))
    if not shown:
        table.caption = pareto.no_best_text(study)
    elif on_front < len(shown):
        table.caption = ("below the front: trials that would be on it were it not for the "
                         "constraints")
    return table


def _objective(index: int, name: str) -> Callable[[FrozenTrial], str]:
    def cell(trial: FrozenTrial) -> str:
        values = trial.values
        return "" if values is None else pareto.value_cell(name, values[index])
    return cell


def _cost(name: str) -> Callable[[FrozenTrial], str]:
    def cell(trial: FrozenTrial) -> str:
        value = pareto.costs_of(trial).get(name)
        return "" if value is None else pareto.value_cell(name, value)
    return cell


def _feasible(trial: FrozenTrial) -> str:
    if not trial.constraints:
        return ""
    return "yes" if feasible(trial) else "no: " + ", ".join(pareto.broken(trial))
