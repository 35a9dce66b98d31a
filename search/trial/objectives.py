"""A study's objectives and constraints (search.spec.objectives_section), as Optuna and MLflow
take them.

- The study is created with one direction per objective (`directions`), its objectives named
  (`record`: Optuna's metric names, which optuna-dashboard shows).
- Each trial's costs (`trainer.model_costs`: measured once per model shape on this machine,
  cached in the cache folder) are taken when its session starts, before anything trains: a
  latency measured while other heads train in this process would time the training too. They
  go to the trial's user attr `COSTS_ATTR` and, as metrics, to its MLflow run (the UI's runs
  table shows them). A spec naming no cost measures nothing.
- At the trial's end (`TrialGoals.value`): each bound is a constraint value (<= 0: met) set
  with Optuna's public `Trial.set_constraint` before the tell, which every sampler (TPE, NSGA-II;
  random and grid ignore them), `Study.best_trials`, `best_trial` and the plots read
  (Optuna 5 deprecates the samplers' `constraints_func` for it); the run gets the tag
  `feasible`. The trial is told one value per objective.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna

import trainer
from search.contracts import COSTS_ATTR, FEASIBLE_TAG
from search.errors import StudyError
from search.spec.loader import StudySpec
from search.spec.objectives_section import Objective, amount
from search.urls import mask_url


def goals(spec: StudySpec) -> tuple[Objective, ...]:
    """The study's objectives: the spec's ``objectives``, or its one ``metric``."""
    return spec.objectives or (Objective(spec.metric, spec.direction),)


def directions(spec: StudySpec) -> list[str]:
    return [objective.direction for objective in goals(spec)]


def study_directions(study: optuna.Study) -> list[str]:
    return [direction.name.lower() for direction in study.directions]


def same_directions(study: optuna.Study, spec: StudySpec) -> bool:
    return study_directions(study) == directions(spec)


def check_directions(study: optuna.Study, spec: StudySpec, storage_url: str) -> None:
    """Raises `StudyError` unless the stored study optimises what the spec says."""
    have, want = study_directions(study), directions(spec)
    if have != want:
        said = (f"objectives: {', '.join(f'{o.direction} {o.name}' for o in goals(spec))}"
                if spec.objectives else f"direction: {spec.direction}")
        raise StudyError(f"study {spec.name!r} in {mask_url(storage_url)} optimises "
                         f"{', '.join(have)}, but the spec says {said}")


def record(study: optuna.Study, spec: StudySpec) -> None:
    """Names a multi-objective study's objectives (Optuna's metric names: the dashboard's
    labels, the report's columns)."""
    if spec.multi_objective:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([objective.name for objective in goals(spec)])


def needs_costs(spec: StudySpec) -> bool:
    """Whether the spec names a cost (an objective or a constraint): only then are they
    measured."""
    return any(item.is_cost for item in (*spec.objectives, *spec.constraints))


def run_params(spec: StudySpec) -> dict[str, str]:
    """The study run's params of the objectives and constraints (none for a plain study)."""
    params = {}
    if spec.objectives:
        params["objectives"] = ", ".join(f"{o.direction} {o.name}" for o in spec.objectives)
    if spec.constraints:
        params["constraints"] = ", ".join(
            label for c in spec.constraints for label in c.values(0.0))
    return params


def best_metrics(spec: StudySpec, best) -> dict[str, float]:
    """The study run's closing metrics: ``best_<objective>`` of its best trial (none: {})."""
    if best is None:
        return {}
    return {f"best_{o.name}": float(v) for o, v in zip(goals(spec), best.values, strict=True)}


class TrialGoals:
    """One trial's costs (measured when its session starts) and, at its end, its constraint
    values and the value(s) it is told."""

    def __init__(self, runner, trial: optuna.Trial, config, run_id: str) -> None:
        self.spec = runner.spec
        self.trial = trial
        self.run_id = run_id
        self.tracker = runner.tracker
        self.costs: dict[str, float] = {}
        self.error: BaseException | None = None
        if not needs_costs(self.spec):
            return
        try:
            measured = trainer.model_costs(config, runner.data.cache_dir,
                                           cache_lock=runner.data.cache_lock)
        except Exception as error:  # fails this trial at its end (`value`), not the batch
            self.error = error
            return
        self.costs = {name: float(getattr(measured, name)) for name in trainer.COST_NAMES}
        trial.set_user_attr(COSTS_ATTR, {**self.costs, "protocol": measured.protocol})
        self.tracker.log(run_id, metrics=self.costs,
                         tags={"cost_protocol": measured.protocol[:5000]})

    def checked(self, result):
        """What the trial ends with: the error that stopped its costs' measurement, if any
        (the trial fails with it, as with its training's own error), else `result`."""
        if self.error is not None and not isinstance(result, BaseException):
            return self.error
        return result

    def value(self, metrics: dict[str, Any]) -> float | list[float]:
        """Sets the trial's constraint values and returns what it is told: its metric's value,
        or one value per objective."""
        measures = {**{k: float(v) for k, v in metrics.items()}, **self.costs}
        if self.spec.constraints:
            broken = []
            for constraint in self.spec.constraints:
                measured = measures[constraint.name]
                for label, excess in constraint.values(measured).items():
                    self.trial.set_constraint(label, excess)
                    if excess > 0:
                        broken.append(f"{label} ({amount(constraint.name, measured)})")
            self.tracker.log(self.run_id, tags={
                FEASIBLE_TAG: "false" if broken else "true",
                **({"breaks": "; ".join(broken)} if broken else {})})
        values = [measures[objective.name] for objective in goals(self.spec)]
        return values if self.spec.multi_objective else values[0]
