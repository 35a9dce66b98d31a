"""Warm start: a study that starts from an earlier one (``warm_start:`` in the spec, or ``run
--warm-start NAME``), so that a random or TPE study around a coarse grid's best does not start
blind (optuna #1930, #2264, #3573, #5710; Katib #1067).

Once, at the study's set-up, under the study lock (`search.study.setup.prepare_queue`):

- The earlier study's COMPLETE trials, best first by its own direction, whose configuration fits
  this study's space: each searched param a value the space can draw (`params.value_in`), and
  the whole `TrainConfig` (the earlier spec's fixed values and defaults included) equal to this
  study's for those params. The first ``top`` are queued first: a grid's points are queued ahead
  of the rest (`grid_queue.fill_queue`'s ``first``: claims take the queue in trial order, and a
  point is queued once, by the point table); a random or TPE study enqueues them
  (`Study.enqueue_trial`: a WAITING trial with ``fixed_params``, which `ask_batch.ask` takes
  before drawing). Trained already on the same data, each is answered from its epoch record.
- A TPE study also learns from every finished trial (COMPLETE or PRUNED) that fits, trained on
  the same data and scored by the same metric and direction: `Study.add_trials` of copies that
  carry this study's distributions, so the sampler sees them (its start-up trials are spent by
  them: its first draw is TPE's). Each copy holds the user attr `FROM_ATTR` (``study#number``).
  They are not this study's own trials: `n_trials` counts the study's own (`own_budget`), the
  leaderboard ranks own trials only, `status` marks them, and `search.contracts.own_best` (the
  run's best, the report's, `promote`'s) never picks one.
- One line says what was done (`Seeded.line`): ``warm start from grid-coarse: 5 queued first,
  18 of 24 trials given to TPE, 6 do not fit the space (learning_rate outside [0.0001, 0.01]:
  6)``.

Done once: the study user attr `DONE_ATTR` records it, so a resumed study or a second worker does
nothing again; and each queued or added trial names its source trial, so a set-up cut off before
that record does not queue or add one twice. The earlier study may be in another storage (an
SQLite grid can seed a PostgreSQL TPE study): it is read through its own read-only session.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import (
    METRIC_ATTR,
    SPEC_ATTR,
    SPEC_PATH_ATTR,
    WARM_START_FROM_ATTR,
    WARM_START_QUEUED_ATTR,
    feasible,
)
from search.errors import InputError, SearchError
from search.spec.loader import StudySpec, spec_from_text
from search.spec.params import distribution, value_in
from search.storage.sessions import load_study_named, storage_session
from search.study import grid_queue
from search.trial import objectives
from search.urls import mask_url
from trainer.config import TrainConfig
from trainer.errors import ConfigError

DONE_ATTR = "fer_search:warm_start"  # study user attr: what the warm start did (a dict), once
FROM_ATTR = WARM_START_FROM_ATTR  # trial user attr of a trial added from the earlier study
QUEUED_ATTR = WARM_START_QUEUED_ATTR  # trial user attr of a random/TPE trial queued first
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass
class Seeded:
    """What `seed` did: the grid points to queue first, and the counts of its line."""

    source: str
    sampler: str
    first: list[dict[str, Any]] = field(default_factory=list)
    queued: int = 0
    finished: int = 0
    added: int = 0
    not_given: str = ""  # why no trial went to TPE, when none did for a reason of its own
    misfits: Counter = field(default_factory=Counter)

    @property
    def line(self) -> str:
        """``warm start from grid-coarse: 5 queued first, 18 of 24 trials given to TPE, 6 do
        not fit the space (learning_rate outside [0.0001, 0.01]: 6)``."""
        parts = [f"{self.queued} queued first"]
        if self.sampler == "tpe":
            parts.append(f"{self.added} of {self.finished} trials given to TPE"
                         + (f" ({self.not_given})" if self.not_given else ""))
        misfit = sum(self.misfits.values())
        if misfit:
            why = "; ".join(f"{reason}: {n}" for reason, n in self.misfits.most_common())
            parts.append(f"{misfit} of {self.finished} do not fit the space ({why})"
                         if self.sampler != "tpe" else f"{misfit} do not fit the space ({why})")
        return f"warm start from {self.source}: " + ", ".join(parts)

    def record(self) -> dict[str, Any]:
        return {"from": self.source, "queued": self.queued, "added": self.added,
                "finished": self.finished, "line": self.line}


@dataclass
class _Source:
    """The earlier study, read once: its finished trials and what they were trained with."""

    name: str
    direction: str
    metric: str | None
    spec: StudySpec | None
    trials: list[FrozenTrial]


def pending(spec: StudySpec, storage) -> bool:
    """Whether `spec` asks for a warm start its study has not done yet (the study may not
    exist yet). A read of the study's attributes, without the lock."""
    if spec.warm_start is None:
        return False
    try:
        study_id = storage.get_study_id_from_name(spec.name)
    except KeyError:
        return True
    return DONE_ATTR not in storage.get_study_user_attrs(study_id)


def read_source(spec: StudySpec, storage, storage_url: str) -> _Source | None:
    """The earlier study, when `spec`'s warm start is `pending`; read before this study is
    created, so that a missing one creates nothing.

    Raises:
        InputError: no such study there (one line, naming the studies there), or its storage
            cannot be read.
    """
    if not pending(spec, storage):
        return None
    warm = spec.warm_start
    url = warm.storage or storage_url
    if url == storage_url:
        return _read(storage, warm.study, url)
    try:
        with storage_session(url, read_only=True) as other:
            return _read(other, warm.study, url)
    except SearchError as error:
        raise InputError(f"warm_start.storage: {error}") from None


def _read(storage, name: str, url: str) -> _Source:
    try:
        study = load_study_named(name, storage, mask_url(url))
    except InputError as error:
        raise InputError(f"warm_start.study: {error}") from None
    text = study.user_attrs.get(SPEC_ATTR)
    earlier = None
    if text:
        try:
            earlier = spec_from_text(text, study.user_attrs.get(SPEC_PATH_ATTR, f"{name}.yaml"))
        except SearchError:  # a spec an older version wrote: compare by the trials' params
            earlier = None
    directions = ",".join(direction.name.lower() for direction in study.directions)
    return _Source(name, directions, study.user_attrs.get(METRIC_ATTR),
                   earlier, study.get_trials(deepcopy=False, states=_FINISHED))


def seed(study: optuna.Study, spec: StudySpec, source: _Source | None) -> Seeded | None:
    """Queues the earlier best configurations first and gives TPE the earlier trials (see the
    module's docstring); a grid's points to queue first are returned (`Seeded.first`) for
    `grid_queue.fill_queue`. Call it under the study lock, then `finish`. None: nothing to do.
    """
    if source is None:
        return None
    seeded = Seeded(source.name, spec.sampler, finished=len(source.trials))
    fitting: list[tuple[FrozenTrial, dict[str, Any]]] = []
    for trial in source.trials:
        params, why = _fit(spec, source.spec, trial)
        if why is not None:
            seeded.misfits[why] += 1
        else:
            fitting.append((trial, params))
    first_up = source.direction.startswith("maximize")  # its first objective's direction
    best_first = sorted(  # those meeting the earlier study's constraints first
        (pair for pair in fitting if pair[0].state == TrialState.COMPLETE),
        key=lambda pair: (not feasible(pair[0]),
                          -pair[0].values[0] if first_up else pair[0].values[0], pair[0].number))
    first: dict[str, tuple[FrozenTrial, dict[str, Any]]] = {}
    for trial, params in best_first:
        if len(first) >= spec.warm_start.top:
            break
        first.setdefault(grid_queue.point_key(params), (trial, params))
    mine = study.get_trials(deepcopy=False)
    if spec.sampler == "grid":
        seeded.first = [params for _, params in first.values()]
        seeded.queued = len(seeded.first)
    else:
        queued = {t.user_attrs.get(QUEUED_ATTR) for t in mine}
        for trial, params in first.values():
            ref = _ref(source, trial)
            if ref not in queued:
                study.enqueue_trial(params, user_attrs={QUEUED_ATTR: ref})
            seeded.queued += 1
    if spec.sampler == "tpe":
        seeded.not_given = _incomparable(spec, source)
        if not seeded.not_given:
            added = {t.user_attrs.get(FROM_ATTR) for t in mine}
            copies = [_copy(spec, source, trial, params) for trial, params in fitting
                      if _ref(source, trial) not in added]
            study.add_trials(copies)
            seeded.added = len(fitting)
    return seeded


def finish(study: optuna.Study, seeded: Seeded | None) -> None:
    """Records that the warm start is done (after a grid's queue was filled), once."""
    if seeded is not None:
        study.set_user_attr(DONE_ATTR, seeded.record())


def added_count(study: optuna.Study) -> int:
    """How many trials the warm start added to the study (not its own)."""
    return int((study.user_attrs.get(DONE_ATTR) or {}).get("added", 0))


def own_budget(spec: StudySpec, study: optuna.Study) -> StudySpec:
    """`spec` with `n_trials` counting this study's own trials only: the trials the warm start
    added are COMPLETE trials of the study, which the budget's counts would otherwise include."""
    added = added_count(study)
    if not added or spec.n_trials is None:
        return spec
    return dataclasses.replace(spec, n_trials=spec.n_trials + added)


def _ref(source: _Source, trial: FrozenTrial) -> str:
    return f"{source.name}#{trial.number}"


def _fit(spec: StudySpec, earlier: StudySpec | None,
         trial: FrozenTrial) -> tuple[dict[str, Any] | None, str | None]:
    """The trial's params in this study's space, or why it does not fit."""
    try:
        config = earlier.train_config(trial.params) if earlier is not None \
            else TrainConfig.from_dict(trial.params)
    except ConfigError as error:
        return None, f"not a valid configuration now ({error.field})"
    params: dict[str, Any] = {}
    for param in spec.space:
        value, why = value_in(param, getattr(config, param.name))
        if why is not None:
            return None, why
        params[param.name] = value
    try:
        mine = spec.train_config(params).to_dict()
    except ConfigError as error:
        return None, f"not a valid configuration with this study's fixed values ({error.field})"
    theirs = config.to_dict()
    for name, value in mine.items():
        if theirs.get(name) != value:
            return None, f"{name} {theirs.get(name)!r} where this study trains {value!r}"
    return params, None


def _incomparable(spec: StudySpec, source: _Source) -> str:
    """Why the earlier values would mislead this study's sampler ('' when they would not)."""
    if source.metric is not None and source.metric != spec.metric:
        return f"they score {source.metric}, this study {spec.metric}"
    mine = ",".join(objectives.directions(spec))
    if source.direction != mine:
        return f"they {source.direction}, this study {mine}" + ("" if "," in mine else "s")
    if source.spec is None:
        return "the earlier study keeps no spec: its data is unknown"
    if source.spec.data != spec.data:
        return "trained on other data"
    if (source.spec.objectives, source.spec.constraints) != (spec.objectives, spec.constraints):
        return "they have other objectives or constraints"
    return ""


def _copy(spec: StudySpec, source: _Source, trial: FrozenTrial,
          params: dict[str, Any]) -> FrozenTrial:
    """The earlier trial as a trial of this study: its params in this space, with this space's
    distributions (the sampler compares them), its value and learning curve, and where it is
    from. No MLflow run id: its run is the earlier study's."""
    distributions = {param.name: distribution(param) for param in spec.space}
    values = {step: v for step, v in trial.intermediate_values.items() if math.isfinite(v)}
    return optuna.trial.create_trial(
        state=trial.state,
        values=list(trial.values) if trial.state == TrialState.COMPLETE else None,
        constraints=dict(trial.constraints) or None,  # the same bounds (`_incomparable`)
        params=params,
        distributions=distributions,
        user_attrs={FROM_ATTR: _ref(source, trial)},
        intermediate_values=values,
    )
