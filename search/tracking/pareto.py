"""A study's objectives and constraints as the report and `status` show them: the Pareto front.

The front is computed here, from the trials alone: a study's own COMPLETE trials (never those a
warm start added) that meet every constraint (`search.contracts.feasible`: Optuna's constraint
values, set by search.trial.objectives), of which no other such trial is at least as good in
every objective and better in one. Optuna's `Study.best_trials` would count the added trials
too. Beside the front, the trials that would be on it were it not for the constraints show what
the constraints cost (feasible: no, and which bound each breaks).

`front_lines` is the report's Markdown table, `draw_front` its picture (``pareto_front.png``,
matplotlib, the first two objectives), `rows` what both and `status` show. The rest adapts the
report to a multi-objective study: Optuna's plots and importances of its ``metric``
(`target_kwargs`), the description's goal and best trial (`goal_text`, `values_text`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import COSTS_ATTR, METRIC_ATTR, feasible, is_added
from search.tracking.spread import value_text

PICTURE = "pareto_front.png"


def is_multi(study: optuna.Study) -> bool:
    return len(study.directions) > 1


def names(study: optuna.Study) -> list[str]:
    """The objectives' names (a multi-objective study's Optuna metric names; else its
    metric)."""
    if not is_multi(study):
        return [study.user_attrs.get(METRIC_ATTR, "value")]
    return list(study.metric_names or [f"objective {i}" for i in range(len(study.directions))])


def maximizes(study: optuna.Study) -> list[bool]:
    return [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]


def constrained(trials: Sequence[FrozenTrial]) -> bool:
    """Whether any trial was given constraints."""
    return any(trial.constraints for trial in trials)


def dominates(a: Sequence[float], b: Sequence[float], up: Sequence[bool]) -> bool:
    """`a` is at least as good as `b` in every objective and better in one."""
    better = [x > y if u else x < y for x, y, u in zip(a, b, up, strict=True)]
    worse = [x < y if u else x > y for x, y, u in zip(a, b, up, strict=True)]
    return any(better) and not any(worse)


def non_dominated(trials: Sequence[FrozenTrial], up: Sequence[bool]) -> list[FrozenTrial]:
    return [t for t in trials
            if not any(dominates(o.values, t.values, up) for o in trials if o is not t)]


def own_complete(study: optuna.Study) -> list[FrozenTrial]:
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not is_added(t)]


def front(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front: own complete feasible non-dominated trials, best first by the first
    objective (ties: by trial number)."""
    up = maximizes(study)
    found = non_dominated([t for t in own_complete(study) if feasible(t)], up)
    return sorted(found, key=lambda t: (-t.values[0] if up[0] else t.values[0], t.number))


def beyond(study: optuna.Study) -> list[FrozenTrial]:
    """Own complete trials that break a constraint and that no other own complete trial
    dominates, feasible or not: the front the constraints rule out (what they cost)."""
    up = maximizes(study)
    everyone = own_complete(study)
    return sorted((t for t in non_dominated(everyone, up) if not feasible(t)),
                  key=lambda t: (-t.values[0] if up[0] else t.values[0], t.number))


def broken(trial: FrozenTrial) -> list[str]:
    """The labels of the constraints `trial` breaks (``latency_ms_b1 <= 20``)."""
    return [label for label, value in trial.constraints.items() if value > 0]


@dataclass(frozen=True)
class Row:
    """One trial of the front table."""

    number: int
    values: tuple[float, ...]
    feasible: bool
    breaks: tuple[str, ...] = ()


def rows(study: optuna.Study) -> list[Row]:
    """The front, then the trials beyond the constraints (`beyond`)."""
    return [Row(t.number, tuple(t.values), feasible(t), tuple(broken(t)))
            for t in [*front(study), *beyond(study)]]


def value_cell(name: str, value: float) -> str:
    if name == "params":
        return f"{value / 1e6:.2f}M"
    if name.startswith("val_"):
        return f"{value:.4f}"
    return f"{value:.3g}"


# ---------------------------------------------------------------------------- the report


def goal_text(study: optuna.Study, metric: str) -> str:
    """``maximize `val_accuracy`, minimize `latency_ms_b1``` (or the one metric's)."""
    return ", ".join(f"{d.name.lower()} `{n}`" for d, n in zip(
        study.directions, names(study) if is_multi(study) else [metric], strict=True))


def values_text(study: optuna.Study, trial: FrozenTrial, metric: str) -> str:
    """The best trial's heading values: ``val_accuracy = 0.4123`` (several objectives: each,
    and by which it was chosen)."""
    if not is_multi(study):
        return f"{metric} = {value_text(trial)}"  # with repeats: mean ± std
    shown = ", ".join(f"{n} = {value_cell(n, v)}" for n, v in zip(names(study), trial.values,
                                                                   strict=True))
    return f"{shown} (the best {names(study)[0]} among the feasible trials)"


def no_best_text(study: optuna.Study) -> str:
    """Why a study has no best trial: none complete, or none that meets every constraint."""
    if own_complete(study):
        return "No complete trial meets every constraint yet."
    return "No trial has completed yet."


def constraint_lines(study: optuna.Study) -> list[str]:
    """How many own complete trials meet the constraints, and what each one breaks."""
    trials = own_complete(study)
    if not constrained(trials):
        return []
    labels = sorted({label for t in trials for label in t.constraints})
    counts = {label: sum(1 for t in trials if t.constraints.get(label, 0) > 0)
              for label in labels}
    ok = sum(1 for t in trials if feasible(t))
    return [f"Constraints: {', '.join(f'`{label}`' for label in labels)}: {ok} of "
            f"{len(trials)} complete trials meet them all"
            + ("" if ok == len(trials) else " (broken: " + ", ".join(
                f"{label} by {n}" for label, n in counts.items() if n) + ")") + ".", ""]


def front_lines(study: optuna.Study, most: int = 20) -> list[str]:
    """The report's Pareto front table (several objectives), with the picture's name."""
    if not is_multi(study):
        return []
    shown = rows(study)
    if not shown:
        return ["### Pareto front", "", "No trial has completed yet.", ""]
    named = names(study)
    with_feasible = constrained(own_complete(study))
    head = ["trial", *named, *(["feasible"] if with_feasible else [])]
    on_front = sum(r.feasible for r in shown)
    lines = [f"### Pareto front ({on_front} trials)", ""]
    if not on_front:
        lines += ["No complete trial meets every constraint yet; without them, the front would "
                  "be:", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in shown[:most]:
        cells = [str(row.number), *(value_cell(n, v) for n, v in zip(named, row.values,
                                                                      strict=True))]
        if with_feasible:
            cells.append("yes" if row.feasible else "no: breaks " + ", ".join(row.breaks))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Each trial on the front is feasible and no other feasible trial is as good "
              "in every objective and better in one" + (
                  "; below them, trials that would be on it were it not for the constraints"
                  if any(not r.feasible for r in shown) else "")
              + f". Picture: `plots/{PICTURE}`.", ""]
    return lines


def target_kwargs(study: optuna.Study, stem: str = "") -> dict:
    """Optuna's plots and importances take one value per trial: a multi-objective study's are
    of its ``metric`` (`target`); none for a plain study, or a plot with no target."""
    if not is_multi(study) or stem == "intermediate_values":
        return {}
    metric = study.user_attrs.get(METRIC_ATTR)
    index = names(study).index(metric) if metric in names(study) else 0
    return {"target": lambda trial: trial.values[index]}


def costs_of(trial: FrozenTrial) -> dict[str, float]:
    """The model costs a trial recorded (search.trial.objectives), without the protocol."""
    found = trial.user_attrs.get(COSTS_ATTR) or {}
    return {k: float(v) for k, v in found.items() if k != "protocol"}


# ---------------------------------------------------------------------------- the picture


def draw_front(study: optuna.Study, folder: Path) -> dict[str, str]:
    """``pareto_front.png`` in `folder`: every own complete trial in the plane of the first two
    objectives (feasible: dots; breaking a constraint: crosses), the front joined and numbered.
    Returns the reason it was not drawn, by name, if it was not."""
    if not is_multi(study):
        return {}
    trials = own_complete(study)
    if not trials:
        return {"pareto_front": "no complete trial yet"}
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named, up = names(study), maximizes(study)
    figure, axes = plt.subplots(figsize=(8, 5.5))
    ok = [t for t in trials if feasible(t)]
    bad = [t for t in trials if not feasible(t)]
    if ok:
        axes.scatter([t.values[0] for t in ok], [t.values[1] for t in ok], c="tab:blue",
                     alpha=0.45, label="feasible")
    if bad:
        axes.scatter([t.values[0] for t in bad], [t.values[1] for t in bad], c="tab:red",
                     marker="x", label="breaks a constraint")
    best = sorted(front(study), key=lambda t: t.values[0])
    if best:
        axes.plot([t.values[0] for t in best], [t.values[1] for t in best], "o-", c="black",
                  label="Pareto front")
    for trial in trials:
        axes.annotate(str(trial.number), (trial.values[0], trial.values[1]),
                      textcoords="offset points", xytext=(5, 5), fontsize=9)
    for label, (axis, bound) in _bounds(trials, named[:2]).items():  # the constraints' lines
        (axes.axvline if axis == 0 else axes.axhline)(bound, ls="--", c="tab:red", lw=1,
                                                      label=label)
    axes.set_xlabel(f"{named[0]} ({'higher' if up[0] else 'lower'} is better)")
    axes.set_ylabel(f"{named[1]} ({'higher' if up[1] else 'lower'} is better)")
    more = f" (of {len(named)} objectives)" if len(named) > 2 else ""
    axes.set_title(f"{study.study_name}: Pareto front, {len(best)} trials{more}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(folder / PICTURE, dpi=100, pil_kwargs={"compress_level": 1})
    plt.close(figure)
    return {}


def value_of(study: optuna.Study, trial: FrozenTrial, name: str) -> float:
    """`trial`'s value of the objective `name` (a plain study: its value)."""
    if not is_multi(study):
        return trial.value
    return trial.values[names(study).index(name)]


def _bounds(trials: Sequence[FrozenTrial], plotted: Sequence[str]) -> dict[str, tuple[int, float]]:
    """The constraints on a plotted objective, by label: (its axis, the bound)."""
    found: dict[str, tuple[int, float]] = {}
    for label in {label for trial in trials for label in trial.constraints}:
        name, _, bound = label.split(" ")  # "latency_ms_b1 <= 20" (objectives_section)
        if name in plotted:
            found[label] = (list(plotted).index(name), float(bound))
    return dict(sorted(found.items()))
