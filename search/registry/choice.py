"""Which trial `fer-search promote` registers, by a named rule, and what the choice traded.

Rules (`search.contracts.PROMOTION_RULES`, ``promote --rule``):

- ``best-feasible`` (the default): among the study's own complete trials that meet every
  constraint, the best by its first objective (a single-objective study: its metric). Without
  constraints every trial meets them: the study's best trial, as always.
- ``best``: the best by the first objective, constraints ignored.

``promote --trial N`` names the trial instead; the note then says which bounds it breaks, if any.
No trial to choose (none complete, or none meets the constraints): an `InputError` naming what
each constraint ruled out, exit 2, nothing registered.

The note (`Choice.note`) is appended to the registered version's description and kept in its
tags (`promotion_rule`, `chosen_because`): the rule, the trial's objectives and costs, and the
better trial by the first objective the rule passed over, with the bounds it breaks::

    trial 7, by rule best-feasible (the best val_accuracy among the trials that meet every
    constraint): val_accuracy 0.4100, latency_ms_b1 12.3 ms, size_mb 59.1 MB; the best
    val_accuracy overall, trial 3 (0.4300), breaks latency_ms_b1 <= 20 (31.2 ms).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial

from search.contracts import DEFAULT_PROMOTION_RULE, PROMOTION_RULES, feasible
from search.errors import InputError
from search.spec.objectives_section import amount
from search.tracking import pareto
from search.urls import mask_url

_WHY = {
    "best-feasible": "the best {first} among the trials that meet every constraint",
    "best": "the best {first}, constraints ignored",
}


@dataclass(frozen=True)
class Choice:
    """The trial to register, the rule that chose it and the note that says so."""

    trial: FrozenTrial
    rule: str
    note: str

    def registration(self, built: dict) -> dict:
        """`log_and_register`'s arguments with the note added to the version's description and
        tags."""
        return {**built, "description": f"{built['description']}\n\n**Chosen**: {self.note}",
                "tags": {**built["tags"], "promotion_rule": self.rule,
                         "chosen_because": self.note[:5000]}}


def choose(study: optuna.Study, storage_url: str, rule: str | None = None,
           named: FrozenTrial | None = None) -> Choice:
    """The trial `rule` picks (or the `named` one, ``--trial``), with its note.

    Raises:
        InputError: an unknown rule; no complete trial; none that meets every constraint.
    """
    rule = rule or DEFAULT_PROMOTION_RULE
    if rule not in PROMOTION_RULES:
        raise InputError(f"--rule: expected one of {', '.join(PROMOTION_RULES)}, "
                         f"but got {rule!r}")
    trials = pareto.own_complete(study)
    if not trials:
        raise InputError(f"study {study.study_name!r} in {mask_url(storage_url)} has no "
                         f"complete trial to promote yet")
    first = pareto.names(study)[0]
    top = _best(study, trials)
    if named is not None:
        trial, how = named, "named by --trial"
    else:
        candidates = trials if rule == "best" else [t for t in trials if feasible(t)]
        if not candidates:
            raise InputError(_none_feasible(study, trials))
        trial = _best(study, candidates)
        how = f"by rule {rule} ({_WHY[rule].format(first=first)})"
    note = f"trial {trial.number}, {how}: {_measures_text(study, trial)}"
    if trial.number != top.number:
        note += (f"; the best {first} overall, trial {top.number} "
                 f"({_first_value(study, top)}), " + _breaks_text(study, top))
    elif not feasible(trial):
        note += "; " + _breaks_text(study, trial)
    return Choice(trial, "trial" if named is not None else rule, note + ".")


def _best(study: optuna.Study, trials: list[FrozenTrial]) -> FrozenTrial:
    """The best by the first objective; ties to the earliest trial."""
    up = pareto.maximizes(study)[0]
    return min(trials, key=lambda t: (-t.values[0] if up else t.values[0], t.number))


def _measures(study: optuna.Study, trial: FrozenTrial) -> dict[str, float]:
    """What a trial measured: its objectives' values, then its model costs."""
    found = dict(zip(pareto.names(study), trial.values, strict=True))
    for name, value in pareto.costs_of(trial).items():
        found.setdefault(name, value)
    return found


def _measures_text(study: optuna.Study, trial: FrozenTrial) -> str:
    return ", ".join(amount(name, value) for name, value in _measures(study, trial).items())


def _first_value(study: optuna.Study, trial: FrozenTrial) -> str:
    return amount(pareto.names(study)[0], trial.values[0]).split(" ", 1)[1]


def _breaks_text(study: optuna.Study, trial: FrozenTrial) -> str:
    """``breaks latency_ms_b1 <= 20 (31.2 ms)``, or ``meets every constraint``."""
    measures = _measures(study, trial)
    parts = []
    for label in pareto.broken(trial):
        name = label.split(" ", 1)[0]
        shown = (amount(name, measures[name]).split(" ", 1)[1] if name in measures
                 else f"by {trial.constraints[label]:.3g}")
        parts.append(f"{label} ({shown})")
    if not parts:
        return "meets every constraint"  # a better trial passed over for another reason
    return "breaks " + ", ".join(parts)


def _none_feasible(study: optuna.Study, trials: list[FrozenTrial]) -> str:
    counts = Counter(label for t in trials for label in pareto.broken(t))
    broken = ", ".join(f"{label}: broken by {n}" for label, n in counts.most_common())
    return (f"study {study.study_name!r}: none of its {len(trials)} complete trials meets every "
            f"constraint ({broken}), so rule best-feasible has nothing to promote; "
            f"`fer-search status {study.study_name}` shows each trial's costs, and "
            f"`--rule best` promotes the best one regardless")
