"""Study specs: one commented YAML file per study, loaded into frozen, validated objects.

`load_spec` reads a file such as ``studies/quickstart.yaml`` and returns a `StudySpec`, or raises
`SpecError` naming the file (and line), the field path, what was expected and what was found.
Nothing outside the spec file is touched: the dataset, weights file and databases are checked
later by whoever opens them.

Every key of ``space`` and ``train`` is a `TrainConfig` field, and every searched value (each grid
value, each choice, both ends of each range) is checked by building a `TrainConfig` from it and the
fixed ``train`` values, so the trainer's own rules reject a bad spec before any trial runs.

Relative paths (``data.root``, ``data.cache_dir``, ``train.weights`` files, the synthetic dataset
under ``data/``, ``sqlite:///relative.db`` URLs) are kept as written, so they are relative to the
current working directory, not to the spec file: the project is run from the repository root,
where ``studies/``, ``data/`` and ``mlruns/`` live. Only the ``data`` paths get ``~`` expanded.

Format (see ``studies/quickstart.yaml`` for a commented example)::

    name: quickstart                  # optional, default: the file's stem
    sampler: grid                     # grid | random | tpe (required)
    seed: 0                           # sampler seed, default 0
    metric: val_accuracy              # val_accuracy | val_macro_f1, default val_accuracy
    direction: maximize               # maximize | minimize, default maximize
    n_trials: null                    # grid: default and maximum = grid size;
                                      # random/tpe: required unless timeout is set
    timeout: null                     # seconds, optional
    max_consecutive_failures: 3       # default 3
    pruner: none                      # none | median | hyperband, default none
    space:                            # required, at least one TrainConfig field
      learning_rate: [1.0e-4, 1.0e-3]             # a list: categorical / grid axis
      batch_size: {choices: [32, 64]}             # categorical
      epochs: {low: 5, high: 20, step: 5}         # int range (int ends, field not a float)
      dropout: {low: 0.0, high: 0.6}              # float range
      head_width: {low: 64, high: 1024, log: true}
    train: {image_size: 48}           # fixed TrainConfig fields, default {}
    data:                             # required: synthetic or root
      synthetic: {faces: 1400, seed: 0, imbalance: false}
      # root: data/expw, label_file, image_dir, margin, min_confidence, strict (ExpW only)
      split: [0.7, 0.1, 0.2]          # optional, both kinds
      split_seed: 0                   # optional, both kinds
      cache_dir: .cache               # optional, both kinds
    storage: sqlite:///studies/optuna.db        # optional
    tracking_uri: sqlite:///mlruns/mlflow.db    # optional
    registry: {model_name: expw-vgg16}          # optional, default expw-vgg16
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from search.errors import _MISSING, SpecError, show
from search.space import Categorical, FloatRange, IntRange, Param, grid_of, grid_size
from trainer.config import DataConfig, TrainConfig
from trainer.errors import ConfigError
from trainer.labels import NUM_CLASSES

SAMPLERS = ("grid", "random", "tpe")
METRICS = ("val_accuracy", "val_macro_f1")
DIRECTIONS = ("maximize", "minimize")
PRUNERS = ("none", "median", "hyperband")
DEFAULT_MODEL_NAME = "expw-vgg16"
DEFAULT_SPLIT = (0.7, 0.1, 0.2)
# Where synthetic datasets are generated, relative to the working directory (DESIGN.md, "Places").
SYNTHETIC_DIR = Path("data")

_TOP_KEYS = (
    "name", "sampler", "seed", "metric", "direction", "n_trials", "timeout",
    "max_consecutive_failures", "pruner", "space", "train", "data", "storage", "tracking_uri",
    "registry",
)
_SYNTHETIC_KEYS = ("faces", "seed", "imbalance")
# Reading options valid for both kinds of data; the rest only make sense for a real ExpW folder.
_COMMON_DATA_KEYS = ("split", "split_seed", "cache_dir")
_EXPW_DATA_KEYS = ("root", "label_file", "image_dir", "margin", "min_confidence", "strict")
_RANGE_KEYS = ("low", "high", "log", "step")
# Names end up in URLs (`models:/name@alias`), file names and MLflow experiment names.
_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_NAME_EXPECTED = "a name of letters, digits, '_', '.' and '-', starting with a letter or digit"
# With int ends a range is an int range, unless the field itself is a float: `{low: 1, high: 3}`
# for dropout or learning_rate must not silently sample only 1, 2, 3.
_FLOAT_FIELDS = frozenset(
    f.name for f in dataclasses.fields(TrainConfig) if f.type in ("float", float)
)
_SEED_LIMIT = 2**32  # numpy's RandomState, under Optuna's samplers, takes seeds below 2**32.
# A field path inside the spec: ("space", "learning_rate", 1) is space.learning_rate[1].
_At: TypeAlias = tuple[str | int, ...]
# The password of `user:password@host`, in a URL or in a mistyped one. A password in a URL has
# ':', '/', '@' percent-encoded, so it cannot contain them.
_URL_SECRET = re.compile(r"(?<=:)[^:@/\s]+(?=@)")


# --------------------------------------------------------------------------------- typed result


@dataclass(frozen=True)
class SyntheticData:
    """A generated ExpW-format dataset, made under ``data/`` on first use.

    Attributes:
        faces: how many faces to generate.
        seed: the generator's seed.
        imbalance: give the classes ExpW's skewed frequencies instead of equal ones.
        split: train / validation / test fractions.
        split_seed: seeds the grouped, stratified split.
    """

    faces: int
    seed: int = 0
    imbalance: bool = False
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0

    @property
    def root(self) -> Path:
        """``data/synthetic-<faces>-<seed>[-imbalanced]``, relative to the working directory."""
        suffix = "-imbalanced" if self.imbalance else ""
        return SYNTHETIC_DIR / f"synthetic-{self.faces}-{self.seed}{suffix}"

    def reading_options(self) -> dict[str, Any]:
        """The `DataConfig` fields this dataset sets (besides ``cache_dir``)."""
        return {"root": self.root, "split": self.split, "split_seed": self.split_seed}


@dataclass(frozen=True)
class ExpwData:
    """A real ExpW folder; the fields mirror `DataConfig` (see it for their meaning)."""

    root: Path
    label_file: Path | None = None
    image_dir: Path | None = None
    margin: float = 0.0
    min_confidence: float | None = None
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0
    strict: bool = False

    def reading_options(self) -> dict[str, Any]:
        """The `DataConfig` fields this dataset sets (besides ``cache_dir``)."""
        return dataclasses.asdict(self)


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
        max_consecutive_failures: stop the study after this many failed trials in a row.
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
    """

    name: str
    sampler: str
    seed: int
    metric: str
    direction: str
    n_trials: int | None
    timeout: float | None
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

    @property
    def param_names(self) -> tuple[str, ...]:
        """The searched `TrainConfig` fields, in spec order."""
        return tuple(param.name for param in self.space)

    @property
    def grid(self) -> dict[str, list[Any]]:
        """The `GridSampler` search space (only for ``sampler: grid``)."""
        return grid_of(self.space)

    @property
    def redacted_text(self) -> str:
        """`text` with passwords in URLs replaced by ``***``: the version to log or print."""
        return mask_url_secrets(self.text)

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


def mask_url_secrets(text: str) -> str:
    """Replaces every password in ``user:password@host`` (as in database URLs) by ``***``."""
    return _URL_SECRET.sub("***", text)


# ---------------------------------------------------------------------------------- YAML reading


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-4`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot: ``learning_rate: 1e-4`` would be the string
    '1e-4'. Learning rates are written that way all the time, so accept YAML 1.2's form too.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
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
    text = _read_text(path)
    node, raw = _parse(path, text)
    return _SpecReader(path, node).read(raw, text)


def spec_from_text(text: str, path: Path | str) -> StudySpec:
    """Validates a spec held in memory (e.g. the copy a study keeps), as if read from `path`."""
    path = Path(path)
    node, raw = _parse(path, text)
    return _SpecReader(path, node).read(raw, text)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            path, None, "an existing study spec file", found_text="no such file"
        ) from None
    except IsADirectoryError:
        raise SpecError(path, None, "a study spec file", found_text="a directory") from None
    except UnicodeDecodeError as error:
        raise SpecError(
            path, None, "a UTF-8 text file", found_text=f"undecodable bytes ({error.reason})"
        ) from None
    except OSError as error:
        raise SpecError(
            path, None, "a readable file", found_text=error.strerror or str(error)
        ) from None


def _parse(path: Path, text: str) -> tuple[Node | None, Any]:
    """Parses ``text`` once into both its node tree (for line numbers) and plain values."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_duplicate_keys(path, node, ())
        return node, loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        if context and problem.startswith("but "):  # "expected a single document ... but found"
            problem = f"{context} {problem}"
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise SpecError(
            path,
            None,
            "valid YAML",
            found_text=f"a YAML error{where}: {problem}",
            line=mark.line + 1 if mark is not None else None,
        ) from None
    finally:
        loader.dispose()


def _check_duplicate_keys(path: Path, node: Node, at: _At) -> None:
    """Rejects a key written twice in one mapping; PyYAML would silently keep the last one."""
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(path, item, (*at, index))
    if not isinstance(node, MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            line = key.start_mark.line + 1
            if key.value in seen:
                raise SpecError(
                    path,
                    _dotted((*at, key.value)),
                    "each key once",
                    found_text=f"{key.value!r} again (first on line {seen[key.value]})",
                    line=line,
                )
            seen[key.value] = line
            _check_duplicate_keys(path, value, (*at, key.value))


def _dotted(at: _At) -> str:
    """``('space', 'learning_rate', 1)`` -> ``space.learning_rate[1]``."""
    if not at:
        return "(top level)"
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


# ------------------------------------------------------------------------------- validation


class _SpecReader:
    """Validates the parsed YAML; knows the file and its node tree, to point errors at lines."""

    def __init__(self, path: Path, node: Node | None) -> None:
        self.path = path
        self.node = node

    # -- errors

    def line(self, at: _At) -> int | None:
        """The line of the deepest node on the path ``at`` (its parent's when a key is missing)."""
        node = self.node
        if node is None:
            return None
        for part in at:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    def error(
        self,
        at: _At,
        expected: str,
        found: object = _MISSING,
        *,
        found_text: str | None = None,
    ) -> SpecError:
        return SpecError(
            self.path, _dotted(at), expected, found, found_text=found_text, line=self.line(at)
        )

    # -- generic readers

    def mapping(
        self,
        value: object,
        at: _At,
        allowed: Iterable[str],
        *,
        required: Iterable[str] = (),
        what: str = "a mapping",
    ) -> dict[str, Any]:
        """Checks ``value`` is a mapping with only ``allowed`` keys and every ``required`` one."""
        allowed = tuple(allowed)
        if not isinstance(value, dict):
            raise self.error(at, what, value)
        for key in value:
            if key not in allowed:
                raise self.error(
                    (*at, key),
                    "one of the keys " + ", ".join(allowed),
                    found_text=_unknown_key(key, allowed),
                )
        for key in required:
            if key not in value:
                raise self.error((*at, key), f"a value for {key!r}", found_text="nothing (missing)")
        return value

    def choice(self, value: object, at: _At, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.error(at, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def integer(self, value: object, at: _At, low: int, high: int | None = None) -> int:
        if not _is_int(value) or value < low or (high is not None and value >= high):
            bound = f"in {low}..{high - 1}" if high is not None else f">= {low}"
            raise self.error(at, f"an integer {bound}", value)
        return value

    def number(self, value: object, at: _At, expected: str = "a number") -> float | int:
        if not _is_number(value):
            raise self.error(at, expected, value)
        return value

    def boolean(self, value: object, at: _At) -> bool:
        if not isinstance(value, bool):
            raise self.error(at, "true or false", value)
        return value

    def string(self, value: object, at: _At, expected: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(at, expected, value)
        return value

    def name(self, value: object, at: _At, hint: str = "") -> str:
        if not isinstance(value, str) or not _NAME_PATTERN.fullmatch(value):
            raise self.error(at, _NAME_EXPECTED + hint, value)
        return value

    # -- the spec

    def read(self, raw: object, text: str) -> StudySpec:
        if raw is None:
            raise self.error((), "a mapping of spec keys", found_text="an empty document")
        top = self.mapping(
            raw, (), _TOP_KEYS, required=("sampler", "space", "data"),
            what="a mapping of spec keys (sampler, space, train, data, ...)",
        )
        sampler = self.choice(top["sampler"], ("sampler",), SAMPLERS)
        train = self.train(top.get("train"))
        space = self.space(top["space"], sampler, train)
        n_trials, timeout = self.budget(top, sampler, space)
        data, cache_dir = self.data(top["data"])
        return StudySpec(
            name=self.study_name(top),
            sampler=sampler,
            seed=self.integer(top.get("seed", 0), ("seed",), 0, _SEED_LIMIT),
            metric=self.choice(top.get("metric", METRICS[0]), ("metric",), METRICS),
            direction=self.choice(top.get("direction", "maximize"), ("direction",), DIRECTIONS),
            n_trials=n_trials,
            timeout=timeout,
            max_consecutive_failures=self.integer(
                top.get("max_consecutive_failures", 3), ("max_consecutive_failures",), 1
            ),
            pruner=self.choice(_or(top.get("pruner"), "none"), ("pruner",), PRUNERS),
            space=space,
            train=train,
            data=data,
            cache_dir=cache_dir,
            storage=self.storage(top.get("storage")),
            tracking_uri=self.optional_string(top.get("tracking_uri"), ("tracking_uri",)),
            model_name=self.model_name(top.get("registry")),
            path=self.path,
            text=text,
        )

    def study_name(self, top: dict[str, Any]) -> str:
        if "name" in top:
            return self.name(top["name"], ("name",))
        return self.name(self.path.stem, ("name",), " (the file's stem; set name: explicitly)")

    def budget(
        self, top: dict[str, Any], sampler: str, space: tuple[Param, ...]
    ) -> tuple[int | None, float | None]:
        """Resolves ``n_trials`` (a grid's default is its size) and ``timeout``."""
        n_trials = top.get("n_trials")
        if n_trials is not None:
            n_trials = self.integer(n_trials, ("n_trials",), 1)
        timeout = top.get("timeout")
        if timeout is not None and (not _is_number(timeout) or timeout <= 0):
            raise self.error(("timeout",), "a number of seconds > 0, or null", timeout)
        if sampler == "grid":
            size = grid_size(space)
            if n_trials is not None and n_trials > size:
                axes = " x ".join(str(len(p.choices)) for p in space if isinstance(p, Categorical))
                raise self.error(
                    ("n_trials",), f"at most the grid's size {size} ({axes}), or null", n_trials
                )
            return (size if n_trials is None else n_trials), timeout
        if n_trials is None and timeout is None:
            raise self.error(
                ("n_trials",),
                f"an integer >= 1 (sampler {sampler} needs n_trials, timeout or both)",
                top.get("n_trials", _MISSING),
            )
        return n_trials, timeout

    def storage(self, value: object) -> str | None:
        if value is None:
            return None
        if not isinstance(value, str) or "://" not in value:
            found = mask_url_secrets(value) if isinstance(value, str) else value
            raise self.error(
                ("storage",), "a database URL such as sqlite:///studies/optuna.db, or null", found
            )
        return value

    def optional_string(self, value: object, at: _At) -> str | None:
        if value is None:
            return None
        return self.string(value, at, "a non-empty string, or null")

    def model_name(self, value: object) -> str:
        if value is None:
            return DEFAULT_MODEL_NAME
        registry = self.mapping(value, ("registry",), ("model_name",))
        return self.name(registry.get("model_name", DEFAULT_MODEL_NAME), ("registry", "model_name"))

    # -- train and space

    def train(self, value: object) -> dict[str, Any]:
        """The fixed `TrainConfig` values, checked by the trainer's own rules."""
        if value is None:
            return {}
        fields = TrainConfig.field_names()
        what = "a mapping of TrainConfig fields"
        train = dict(self.mapping(value, ("train",), fields, what=what))
        try:
            TrainConfig(**train)
        except ConfigError as error:
            raise self.error(("train", error.field), error.expected, error.found) from error
        return train

    def space(self, value: object, sampler: str, train: dict[str, Any]) -> tuple[Param, ...]:
        fields = TrainConfig.field_names()
        space = self.mapping(
            value, ("space",), fields,
            what="a mapping of TrainConfig fields to lists of values or ranges",
        )
        if not space:
            raise self.error(("space",), "at least one searched TrainConfig field", space)
        params = []
        for name, spec in space.items():
            if name in train:
                raise self.error(
                    ("train", name),
                    f"{name} either searched (space.{name}) or fixed (train.{name}), not both",
                    train[name],
                )
            param, candidates = self.param(name, spec, sampler)
            self.check_with_trainer(name, candidates, train)
            params.append(param)
        return tuple(params)

    def param(
        self, name: str, value: object, sampler: str
    ) -> tuple[Param, list[tuple[_At, Any]]]:
        """One searched field, and the values (with their paths) the trainer must accept."""
        at: _At = ("space", name)
        if isinstance(value, list):
            return self.categorical(name, value, at)
        if isinstance(value, dict) and "choices" in value:
            self.mapping(value, at, ("choices",))
            return self.categorical(name, value["choices"], (*at, "choices"))
        if isinstance(value, dict):
            if sampler == "grid":
                raise self.error(
                    at, "a list of values (sampler grid cannot search a range)", value
                )
            return self.range(name, value, at)
        raise self.error(
            at,
            "a non-empty list of values, {choices: [...]} or a range {low, high, log, step}",
            value,
        )

    def categorical(
        self, name: str, values: object, at: _At
    ) -> tuple[Categorical, list[tuple[_At, Any]]]:
        if not isinstance(values, list) or not values:
            raise self.error(at, "a non-empty list of values", values)
        for index, item in enumerate(values):
            if not isinstance(item, str | int | float | bool):
                raise self.error((*at, index), "a number, string, true or false", item)
            # Equal values of one type would run the same configuration twice.
            if any(type(other) is type(item) and other == item for other in values[:index]):
                raise self.error((*at, index), "values that differ from each other", item)
        candidates = [((*at, index), item) for index, item in enumerate(values)]
        return Categorical(name, tuple(values)), candidates

    def range(
        self, name: str, value: dict[str, Any], at: _At
    ) -> tuple[FloatRange | IntRange, list[tuple[_At, Any]]]:
        spec = self.mapping(value, at, _RANGE_KEYS, required=("low", "high"))
        low = self.number(spec["low"], (*at, "low"))
        high = self.number(spec["high"], (*at, "high"))
        log = self.boolean(spec.get("log", False), (*at, "log"))
        if low > high:
            raise self.error(at, "low <= high", found_text=f"low={low!r}, high={high!r}")
        if log and low <= 0:
            raise self.error((*at, "low"), "a number > 0 (log: true samples in log space)", low)
        if log and "step" in spec:
            raise self.error(
                (*at, "step"), "no step with log: true (log and step exclusive)", spec["step"]
            )
        candidates = [((*at, "low"), low), ((*at, "high"), high)]
        if _is_int(low) and _is_int(high) and name not in _FLOAT_FIELDS:
            step = self.integer(spec.get("step", 1), (*at, "step"), 1)
            if (high - low) % step:
                raise self.error((*at, "step"), f"a step dividing high - low = {high - low}", step)
            return IntRange(name, low, high, step, log), candidates
        step = spec.get("step")
        if step is not None:
            if not _is_number(step) or step <= 0:
                raise self.error((*at, "step"), "a number > 0, or null", step)
            count = (high - low) / step
            if not math.isclose(count, round(count), rel_tol=1e-9, abs_tol=1e-9):
                raise self.error(
                    (*at, "step"), f"a step dividing high - low = {high - low!r}", step
                )
            step = float(step)
        return FloatRange(name, float(low), float(high), log, step), candidates

    def check_with_trainer(
        self,
        name: str,
        candidates: list[tuple[_At, Any]],
        train: dict[str, Any],
    ) -> None:
        """Builds a `TrainConfig` from each candidate value and the fixed values."""
        for at, value in candidates:
            try:
                TrainConfig(**{**train, name: value})
            except ConfigError as error:
                expected = error.expected if error.field == name else (
                    f"{error.expected} (for {error.field})"
                )
                raise self.error(at, expected, error.found) from error

    # -- data

    def data(self, value: object) -> tuple[SyntheticData | ExpwData, Path]:
        at: _At = ("data",)
        if not isinstance(value, dict):
            raise self.error(at, "a mapping with synthetic: {faces, ...} or root: path", value)
        if "synthetic" in value and "root" in value:
            raise self.error(
                at, "either synthetic or root, not both", found_text="both synthetic and root"
            )
        if "synthetic" in value:
            self.mapping(value, at, ("synthetic", *_COMMON_DATA_KEYS))
            data: SyntheticData | ExpwData = self.synthetic(value)
        elif "root" in value:
            self.mapping(value, at, (*_EXPW_DATA_KEYS, *_COMMON_DATA_KEYS))
            data = self.expw(value)
        else:
            raise self.error(
                at,
                "either synthetic: {faces, seed, imbalance} or root: path/to/expw",
                found_text=f"neither (keys: {', '.join(map(str, value)) or 'none'})",
            )
        cache_dir = _path(self.string(value.get("cache_dir", ".cache"), (*at, "cache_dir")))
        self.check_data_config(data, cache_dir)
        return data, cache_dir

    def synthetic(self, value: dict[str, Any]) -> SyntheticData:
        at: _At = ("data", "synthetic")
        spec = self.mapping(
            value["synthetic"], at, _SYNTHETIC_KEYS, required=("faces",),
            what="a mapping {faces, seed, imbalance}",
        )
        return SyntheticData(
            # The generator needs at least one face per class (trainer.synthetic).
            faces=self.integer(spec["faces"], (*at, "faces"), NUM_CLASSES),
            seed=self.integer(spec.get("seed", 0), (*at, "seed"), 0),
            imbalance=self.boolean(spec.get("imbalance", False), (*at, "imbalance")),
            **self.split_options(value),
        )

    def expw(self, value: dict[str, Any]) -> ExpwData:
        at: _At = ("data",)
        paths = {}
        for key in ("root", "label_file", "image_dir"):
            if value.get(key) is not None or key == "root":
                paths[key] = _path(self.string(value.get(key), (*at, key), "a path"))
        min_confidence = value.get("min_confidence")
        if min_confidence is not None:
            min_confidence = self.number(min_confidence, (*at, "min_confidence"), "a number >= 0")
        return ExpwData(
            **paths,
            margin=self.number(value.get("margin", 0.0), (*at, "margin"), "a number in [0, 1]"),
            min_confidence=min_confidence,
            strict=self.boolean(value.get("strict", False), (*at, "strict")),
            **self.split_options(value),
        )

    def split_options(self, value: dict[str, Any]) -> dict[str, Any]:
        split = value.get("split", list(DEFAULT_SPLIT))
        if not isinstance(split, list):
            raise self.error(("data", "split"), "a list [train, val, test]", split)
        split_seed = self.integer(value.get("split_seed", 0), ("data", "split_seed"), 0)
        return {"split": tuple(split), "split_seed": split_seed}

    def check_data_config(self, data: SyntheticData | ExpwData, cache_dir: Path) -> None:
        """Lets `DataConfig` apply its own rules (split fractions, margin, ...)."""
        try:
            DataConfig(**data.reading_options(), cache_dir=cache_dir)
        except ConfigError as error:
            # `split` went in as a tuple; show it as the list the user wrote.
            found = list(error.found) if isinstance(error.found, tuple) else error.found
            raise self.error(("data", error.field), error.expected, found) from error


# -------------------------------------------------------------------------------------- helpers


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _unknown_key(key: object, allowed: tuple[str, ...]) -> str:
    text = f"an unknown key {show(key)}"
    close = difflib.get_close_matches(str(key), allowed, n=1) if isinstance(key, str) else []
    return f"{text} (did you mean {close[0]!r}?)" if close else text


def _is_int(value: object) -> bool:
    # bool is an int subclass; `epochs: true` is a typo, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _or(value: object, default: object) -> object:
    return default if value is None else value


def _path(text: str) -> Path:
    # `~` is expanded; anything else relative stays relative to the working directory.
    return Path(text).expanduser()
