"""Study specs: one commented YAML file per study, loaded into frozen, validated objects.

`load_spec` reads a file such as ``studies/quickstart.yaml`` and returns a `StudySpec`, or raises
`SpecError` naming the file (and line), the field path, what was expected and what was found.
Nothing outside the spec file is touched: the dataset, weights file and databases are checked
later by whoever opens them. Unknown keys are errors at every level.

The work is split by section: `search.spec.reader` (YAML, line numbers, pydantic's errors as
spec errors), `search.spec.sections` (``space`` and ``train``), `search.spec.data_section`
(``data``), `search.spec.redacted` (the text with passwords masked); this module holds the
top-level keys (`_Study`, a pydantic model) and builds the `StudySpec`. Each key is checked on
its own by pydantic; the rules that join keys (a field searched or fixed, a grid's ranges, the
budget against the grid's size, the name from the file's stem) are plain code in `_Study.spec`.

Relative paths (``data.root``, ``data.cache_dir``, ``train.weights`` files, the synthetic dataset
under ``data/``, ``sqlite:///relative.db`` URLs) are kept as written, so they are relative to the
current working directory, not to the spec file: the project is run from the repository root,
where ``studies/``, ``data/`` and ``mlruns/`` live. Only the ``data`` paths get ``~`` expanded.

Format (see ``studies/quickstart.yaml`` for a commented example)::

    name: quickstart                  # optional, default: the file's stem
    sampler: grid                     # grid | random | tpe | nsga2 (required)
    seed: 0                           # sampler seed, default 0
    metric: val_accuracy              # val_accuracy | val_macro_f1, default val_accuracy
    direction: maximize               # maximize | minimize, default maximize
    n_trials: null                    # grid: default and maximum = grid size;
                                      # random/tpe: required unless timeout is set
    timeout: null                     # seconds after which no new trial starts, optional
    trial_timeout: null               # seconds one trial may run, optional
    max_consecutive_failures: 3       # default 3 (one worker's failures in a row)
    max_failed_trials: null           # stop every worker after this many trials failed for
                                      # good, counted in the storage; default null (no limit)
    pruner: none                      # none | median | hyperband, default none
    space: {...}                      # required: see search.spec.sections
    train: {image_size: 48}           # fixed TrainConfig fields, default {}
    data: {...}                       # required: see search.spec.data_section
    storage: sqlite:///studies/optuna.db        # optional
    tracking_uri: sqlite:///mlruns/mlflow.db    # optional
    registry: {model_name: expw-vgg16}          # optional, default expw-vgg16
    warm_start: {study: quickstart, top: 5}     # optional: see search.spec.warm_section
    objectives: [{name: val_accuracy}, {name: latency_ms_b1}]  # optional, in place of
                                      # metric/direction; see search.spec.objectives_section
    constraints: {latency_ms_b1: {max: 20}}     # optional: see search.spec.objectives_section
    repeats: 1                        # seeds per configuration, default 1: a trial whose
                                      # config seed is s trains seeds s, s+1, ..., s+N-1 and
                                      # its value is their mean (search.trial.repeats)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, ValidationInfo, field_validator

from search.contracts import DEFAULT_MODEL_NAME, MODEL_NAME_EXPECTED, MODEL_NAME_PATTERN
from search.errors import _MISSING, SpecError
from search.spec.data_section import SYNTHETIC_DIR, ExpwData, SyntheticData, read_data
from search.spec.objectives_section import (
    CONSTRAINTS_EXPECTED,
    DIRECTIONS,
    METRICS,
    OBJECTIVES_EXPECTED,
    Constraint,
    Constraints,
    Objective,
    Objectives,
    joined,
)
from search.spec.params import Categorical, Param, grid_of, grid_size
from search.spec.reader import Fault, NodeReader, Strict, one_of, parse, read_text
from search.spec.redacted import redacted
from search.spec.sections import TRAIN_FIELDS, Space, Train, params
from search.spec.warm_section import STORAGE_EXPECTED, WarmStart, WarmStartSection, storage_url
from trainer.config import DEFAULT_SPLIT, DataConfig, TrainConfig
from trainer.heads.grouping import shareable

__all__ = [
    "DEFAULT_MODEL_NAME", "DEFAULT_SPLIT", "DIRECTIONS", "METRICS", "PRUNERS", "SAMPLERS",
    "SYNTHETIC_DIR", "ExpwData", "SpecError", "StudySpec", "SyntheticData", "WarmStart",
    "load_spec", "spec_from_text",
]

SAMPLERS = ("grid", "random", "tpe", "nsga2")
PRUNERS = ("none", "median", "hyperband")

_SEED_LIMIT = 2**32  # numpy's RandomState, under Optuna's samplers, takes seeds below 2**32.


@dataclass(frozen=True)
class StudySpec:
    """One study, as validated from its YAML file.

    Attributes:
        name: the study's name (Optuna study, MLflow experiment); default: the file's stem.
        sampler: ``grid``, ``random`` or ``tpe``.
        seed: the sampler's seed.
        metric: the validation metric optimised, ``val_accuracy`` or ``val_macro_f1``.
        direction: ``maximize`` or ``minimize``.
        n_trials: trials to run; for a grid at most (and by default) the grid's size; None when
            only ``timeout`` bounds a random or TPE study.
        timeout: seconds after which no new trial starts, or None.
        trial_timeout: seconds one trial may run before it is stopped and failed, or None.
        max_consecutive_failures: stop the study after this many failed trials in a row.
        max_failed_trials: stop every worker of the study once this many of its trials have
            failed for good (counted in the storage across workers); None: no limit.
        pruner: ``none``, ``median`` or ``hyperband``.
        space: the searched parameters, in spec order.
        train: fixed `TrainConfig` values (never one of the searched names).
        data: the dataset.
        cache_dir: where crops and features are cached.
        storage: the Optuna storage URL, or None for the CLI's default.
        tracking_uri: the MLflow tracking URI, or None for the CLI's default.
        model_name: the MLflow registered model the best trial is promoted to.
        path: the spec file, as given.
        text: the file's raw text, logged as an artifact (see `redacted_text`).
        warm_start: the earlier study this one starts from (search.study.warm_start), or None.
        repeats: seeds trained per configuration (search.trial.repeats); 1: the trial's own.
        objectives: two or more metrics and costs optimised together, or () when `metric`
            alone is (search.spec.objectives_section); `metric` is then their first metric.
        constraints: bounds on metrics or costs a trial must meet to be feasible.
    """

    name: str
    sampler: str
    seed: int
    metric: str
    direction: str
    n_trials: int | None
    timeout: float | None
    trial_timeout: float | None
    max_consecutive_failures: int
    pruner: str
    space: tuple[Param, ...]
    train: dict[str, Any]
    data: SyntheticData | ExpwData
    cache_dir: Path
    storage: str | None
    tracking_uri: str | None
    model_name: str
    path: Path
    text: str = field(repr=False)
    max_failed_trials: int | None = None
    warm_start: WarmStart | None = None
    repeats: int = 1
    objectives: tuple[Objective, ...] = ()  # two or more, or () for `metric` alone
    constraints: tuple[Constraint, ...] = ()

    @property
    def multi_objective(self) -> bool:
        """Several objectives (search.spec.objectives_section): Optuna takes no per-epoch
        values (`Trial.report`) of such a study."""
        return len(self.objectives) > 1

    @property
    def param_names(self) -> tuple[str, ...]:
        """The searched `TrainConfig` fields, in spec order."""
        return tuple(param.name for param in self.space)

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The grid queue's space, each parameter's values (only for ``sampler: grid``)."""
        return grid_of(self.space)

    @property
    def heads_only(self) -> bool:
        """Every trial trains only a head on cached features (the trainer's `shareable`, for
        each value a searched param can take: each choice, both ends of a range)."""
        values = [{}]
        for param in self.space:
            ends = getattr(param, "choices", None) or (param.low, param.high)
            values += [{param.name: value} for value in ends]
        return all(shareable(self.train_config(v)) for v in values)

    @property
    def redacted_text(self) -> str:
        """`text` with the password of every URL replaced by ``***``: the version to store
        (the study's `spec_yaml`, the MLflow artifact `spec/study.yaml`), log or print.

        Rebuilt from the parsed YAML, not by a pattern over the raw text (where a quoted URL's
        password may hold a space, a quote or '<'): each string value is masked
        (`search.urls.mask_url` for a URL and for ``storage``/``tracking_uri``, `mask_text`
        for other text) and written back in place, quoted as YAML needs, so comments and
        layout stay. Then each of those URLs' passwords is masked wherever else it stands as
        one (a commented-out copy of the line, say). Should the rebuilt text not read back as
        the masked values, the masked values are written out afresh (comments lost)."""
        return redacted(self.text, self.path)

    def train_config(self, params: Mapping[str, Any] | None = None) -> TrainConfig:
        """The trainer config of one trial: the fixed ``train`` values plus the trial's params.

        Args:
            params: sampled values by `TrainConfig` field (e.g. ``trial.params``).

        Raises:
            trainer.errors.ConfigError: a key is not a `TrainConfig` field or a value is invalid.
        """
        return TrainConfig.from_dict({**self.train, **(params or {})})

    def data_config(
        self, *, cache_dir: Path | str | None = None, workers: int | None = None
    ) -> DataConfig:
        """The trainer's `DataConfig` for this study's dataset.

        For synthetic data the root is where the dataset is (or will be) generated; making it is
        the caller's job.

        Args:
            cache_dir: overrides the spec's ``data.cache_dir`` (e.g. from a CLI flag).
            workers: image-decoding threads; a property of the machine, so not in the spec.
        """
        return DataConfig(
            **self.data.reading_options(),
            cache_dir=Path(cache_dir) if cache_dir is not None else self.cache_dir,
            workers=workers,
        )


def load_spec(path: Path | str) -> StudySpec:
    """Reads and validates a study spec.

    Args:
        path: the YAML file.

    Returns:
        The frozen, validated spec.

    Raises:
        SpecError: the file is missing, unreadable, not YAML, or holds an invalid spec.
    """
    path = Path(path)
    return spec_from_text(read_text(path), path)


def spec_from_text(text: str, path: Path | str) -> StudySpec:
    """Validates a spec held in memory (e.g. the copy a study keeps), as if read from `path`."""
    path = Path(path)
    node, raw = parse(path, text)
    reader = NodeReader(path, node)
    if raw is None:
        raise reader.error((), "a mapping of spec keys", found_text="an empty document")
    top = reader.validate(_Study, raw)
    try:
        return top.spec(path, text)
    except Fault as fault:
        raise reader.fault(fault) from None


_NAME = f"^{MODEL_NAME_PATTERN.pattern}$"
_STORAGE = STORAGE_EXPECTED
_Seconds = Annotated[
    int | float | None, Field(gt=0, description="a number of seconds > 0, or null")
]


class _Registry(Strict):
    model_name: str = Field(DEFAULT_MODEL_NAME, pattern=_NAME, description=MODEL_NAME_EXPECTED)


class _Study(Strict):
    """The top-level keys, each on its own; `spec` applies the rules that join them."""

    what: ClassVar[str] = "a mapping of spec keys (sampler, space, train, data, ...)"
    name: str | None = Field(None, pattern=_NAME, description=MODEL_NAME_EXPECTED)
    sampler: Literal[SAMPLERS] = Field(description=one_of(SAMPLERS))
    seed: int = Field(
        0, ge=0, lt=_SEED_LIMIT, description=f"an integer in 0..{_SEED_LIMIT - 1}"
    )
    metric: Literal[METRICS] = Field(METRICS[0], description=one_of(METRICS))
    direction: Literal[DIRECTIONS] = Field("maximize", description=one_of(DIRECTIONS))
    n_trials: int | None = Field(None, ge=1, description="an integer >= 1")
    timeout: _Seconds = None
    trial_timeout: _Seconds = None
    max_consecutive_failures: int = Field(3, ge=1, description="an integer >= 1")
    max_failed_trials: int | None = Field(None, ge=1, description="an integer >= 1, or null")
    pruner: Literal[PRUNERS] | None = Field("none", description=one_of(PRUNERS))
    space: Space = Field(
        description="a mapping of TrainConfig fields to lists of values or ranges"
    )
    train: Train | None = Field(None, description="a mapping of TrainConfig fields")
    data: Annotated[Any, AfterValidator(read_data)]
    storage: Annotated[str | None, AfterValidator(storage_url)] = Field(
        None, description=_STORAGE
    )
    tracking_uri: str | None = Field(
        None, pattern=r"\S", description="a non-empty string, or null"
    )
    registry: _Registry | None = None
    warm_start: WarmStartSection | None = None
    repeats: int = Field(1, ge=1, description="an integer >= 1 (seeds per configuration)")
    objectives: Objectives | None = Field(None, description=OBJECTIVES_EXPECTED)
    constraints: Constraints | None = Field(None, description=CONSTRAINTS_EXPECTED)

    @field_validator("space", mode="before")
    @classmethod
    def _grid_takes_lists(cls, space: Any, info: ValidationInfo) -> Any:
        """Before a range's own rules: in a grid, a range is the fault."""
        if info.data.get("sampler") == "grid" and isinstance(space, dict):
            for name, value in space.items():
                if name in TRAIN_FIELDS and isinstance(value, dict) and "choices" not in value:
                    raise Fault(
                        (name,), "a list of values (sampler grid cannot search a range)", value
                    )
        return space

    def spec(self, path: Path, text: str) -> StudySpec:
        """The `StudySpec`, after the rules that join keys: the space with the sampler and the
        fixed values, the budget with the grid, the default name with the file's name."""
        train = dict(self.train or {})
        space = params(self.space, train)
        data, cache_dir = self.data
        goals = joined(self)  # objectives, constraints, with metric, direction and pruner
        name = self.name if self.name is not None else _stem_name(path)
        if self.warm_start is not None and self.warm_start.study == name:
            raise Fault(("warm_start", "study"), f"an earlier study, not {name!r} itself",
                        self.warm_start.study)
        if self.repeats > 1 and "seed" in self.space:
            # Repeats train seeds s..s+N-1 of the trial's seed s: searched seeds would overlap.
            raise Fault(("repeats",), "1 while seed is searched in space (repeats train seeds "
                        "s, s+1, ... of each trial's seed s; fix seed under train instead)",
                        self.repeats)
        return StudySpec(
            name=name,
            sampler=self.sampler,
            seed=self.seed,
            metric=goals.metric,
            direction=goals.direction,
            n_trials=self.budget(space),
            timeout=self.timeout,
            trial_timeout=self.trial_timeout,
            max_consecutive_failures=self.max_consecutive_failures,
            max_failed_trials=self.max_failed_trials,
            pruner=self.pruner or "none",
            space=space,
            train=train,
            data=data,
            cache_dir=cache_dir,
            storage=self.storage,
            tracking_uri=self.tracking_uri,
            model_name=(self.registry or _Registry()).model_name,
            path=path,
            text=text,
            warm_start=self.warm_start.warm_start() if self.warm_start is not None else None,
            repeats=self.repeats,
            objectives=goals.objectives,
            constraints=goals.constraints,
        )

    def budget(self, space: tuple[Param, ...]) -> int | None:
        """``n_trials``: a grid's default is its size; random and TPE need it or a timeout."""
        if self.sampler == "grid":
            size = grid_size(space)
            if self.n_trials is not None and self.n_trials > size:
                axes = " x ".join(str(len(p.choices)) for p in space if isinstance(p, Categorical))
                raise Fault(
                    ("n_trials",), f"at most the grid's size {size} ({axes}), or null",
                    self.n_trials,
                )
            return size if self.n_trials is None else self.n_trials
        if self.n_trials is None and self.timeout is None:
            raise Fault(
                ("n_trials",),
                f"an integer >= 1 (sampler {self.sampler} needs n_trials, timeout or both)",
                None if "n_trials" in self.model_fields_set else _MISSING,
            )
        return self.n_trials


def _stem_name(path: Path) -> str:
    if not MODEL_NAME_PATTERN.fullmatch(path.stem):
        raise Fault(
            ("name",), MODEL_NAME_EXPECTED + " (the file's stem; set name: explicitly)", path.stem
        )
    return path.stem
