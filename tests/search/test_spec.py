"""Study specs: the shipped files load, defaults resolve, and every bad spec names its fault."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from search.errors import SearchError, SpecError
from search.spec.data_section import ExpwData, SyntheticData
from search.spec.loader import StudySpec, load_spec
from search.spec.params import Categorical, FloatRange, IntRange
from trainer.config import DEFAULT_SPLIT, DataConfig, TrainConfig

STUDIES = Path(__file__).resolve().parents[2] / "studies"

# The smallest valid spec; each bad case below changes one thing in it.
BASE: dict[str, Any] = {
    "sampler": "grid",
    "space": {"learning_rate": [0.001, 0.01], "batch_size": [32, 64]},
    "train": {"image_size": 48, "weights": "none"},
    "data": {"synthetic": {"faces": 100}},
}


def _with(*changes: tuple[str, Any]) -> dict[str, Any]:
    """BASE with dotted paths set (or deleted, for the value `_DELETE`)."""
    spec = copy.deepcopy(BASE)
    for dotted, value in changes:
        *parents, last = dotted.split(".")
        node = spec
        for part in parents:
            node = node[part]
        if value is _DELETE:
            del node[last]
        else:
            node[last] = value
    return spec


_DELETE = object()
RANDOM = ("sampler", "random")
TRIALS = ("n_trials", 5)


def _write(tmp_path: Path, spec: dict[str, Any] | str, name: str = "study.yaml") -> Path:
    path = tmp_path / name
    text = spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- shipped specs


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_loads(path: Path) -> None:
    spec = load_spec(path)
    assert spec.name == path.stem
    assert spec.text == path.read_text(encoding="utf-8")
    assert spec.space
    assert isinstance(spec.data_config(), DataConfig)
    # Every point of the search space makes a valid trainer config.
    for param in spec.space:
        values = param.choices if isinstance(param, Categorical) else (param.low, param.high)
        for value in values:
            assert isinstance(spec.train_config({param.name: value}), TrainConfig)


def test_shipped_specs_exist() -> None:
    names = {path.name for path in STUDIES.glob("*.yaml")}
    assert {"quickstart.yaml", "expw-grid.yaml", "expw-random.yaml"} <= names


def test_quickstart_is_a_small_frozen_grid_on_synthetic_data() -> None:
    spec = load_spec(STUDIES / "quickstart.yaml")
    assert spec.sampler == "grid"
    assert isinstance(spec.data, SyntheticData)
    assert spec.train["weights"] == "none"
    assert spec.train["trainable_blocks"] == 0
    assert spec.n_trials is not None and spec.n_trials >= 3 * 2 * 2 * 2
    assert {"learning_rate", "batch_size", "epochs", "head_width"} <= set(spec.param_names)
    assert spec.pruner == "none"
    assert spec.model_name == "expw-vgg16"


def test_expw_random_uses_ranges() -> None:
    spec = load_spec(STUDIES / "expw-random.yaml")
    space = {param.name: param for param in spec.space}
    assert spec.n_trials == 30
    assert space["learning_rate"] == FloatRange("learning_rate", 1e-5, 1e-2, log=True)
    assert space["batch_size"] == Categorical("batch_size", (16, 32, 64, 128))
    assert space["epochs"] == IntRange("epochs", 5, 20)
    assert space["head_width"] == IntRange("head_width", 64, 1024, log=True)
    assert space["dropout"] == FloatRange("dropout", 0.0, 0.6)
    assert spec.pruner == "median"
    assert isinstance(spec.data, ExpwData)


# ---------------------------------------------------------------------------------- defaults


def test_defaults(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BASE, "my-study.yaml"))
    assert isinstance(spec, StudySpec)
    assert spec.name == "my-study"
    assert spec.n_trials == 4  # the grid's size, 2 x 2
    assert (spec.seed, spec.metric, spec.direction) == (0, "val_accuracy", "maximize")
    assert (spec.timeout, spec.pruner, spec.max_consecutive_failures) == (None, "none", 3)
    assert (spec.storage, spec.tracking_uri, spec.model_name) == (None, None, "expw-vgg16")
    assert spec.cache_dir == Path(".cache")
    assert spec.data == SyntheticData(faces=100)
    assert spec.path == tmp_path / "my-study.yaml"


def test_grid_may_run_part_of_the_grid(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, _with(("n_trials", 3), ("timeout", 60))))
    assert (spec.n_trials, spec.timeout) == (3, 60)


@pytest.mark.parametrize("seconds", [600, 0.5])
def test_trial_timeout(tmp_path: Path, seconds: float) -> None:
    assert load_spec(_write(tmp_path, BASE)).trial_timeout is None  # default: no limit
    assert load_spec(_write(tmp_path, _with(("trial_timeout", None)))).trial_timeout is None
    spec = load_spec(_write(tmp_path, _with(("trial_timeout", seconds))))
    assert spec.trial_timeout == seconds
    assert spec.timeout is None  # the study's budget is a different key


def test_a_misspelt_trial_timeout_is_an_unknown_key(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as caught:
        load_spec(_write(tmp_path, _with(("trial_timout", 60))))
    assert "did you mean 'trial_timeout'?" in str(caught.value)


def test_random_with_timeout_only(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, _with(RANDOM, ("timeout", 1.5))))
    assert (spec.n_trials, spec.timeout) == (None, 1.5)


def test_grid_values_keep_their_yaml_types(tmp_path: Path) -> None:
    text = (
        "sampler: grid\n"
        "space:\n"
        "  learning_rate: [1e-4, 1.0e-3]\n"  # PyYAML alone reads 1e-4 as a string
        "  batch_size: [32, 64]\n"
        "  augment: [true, false]\n"
        "  pooling: {choices: [avg, flatten]}\n"
        "data: {synthetic: {faces: 10}}\n"
    )
    spec = load_spec(_write(tmp_path, text))
    assert spec.grid == {
        "learning_rate": [1e-4, 1e-3],
        "batch_size": [32, 64],
        "augment": [True, False],
        "pooling": ["avg", "flatten"],
    }
    assert all(type(v) is int for v in spec.grid["batch_size"])
    assert spec.n_trials == 16


def test_any_train_config_field_is_a_grid_axis_label_smoothing_too(tmp_path: Path) -> None:
    text = (
        "sampler: grid\n"
        "space:\n"
        "  label_smoothing: [0.0, 0.1]\n"
        "  learning_rate: [0.001, 0.01]\n"
        "train: {image_size: 48, weights: none}\n"
        "data: {synthetic: {faces: 10}}\n"
    )
    spec = load_spec(_write(tmp_path, text))
    assert spec.grid["label_smoothing"] == [0.0, 0.1]
    assert spec.n_trials == 4
    assert spec.heads_only
    config = spec.train_config({"label_smoothing": 0.1, "learning_rate": 0.01})
    assert config.label_smoothing == 0.1
    with pytest.raises(SpecError, match="label_smoothing"):  # each value by the field's rule
        load_spec(_write(tmp_path, text.replace("[0.0, 0.1]", "[0.0, 1.0]"), "bad.yaml"))


def test_the_head_activation_is_searched_like_any_other_setting(tmp_path: Path) -> None:
    """`activation` (a TrainConfig field added after the spec's code) needs nothing in search/:
    a grid axis, a categorical choice for random and TPE, each value by the field's rule."""
    import optuna

    from search.spec.params import suggest_all

    grid = (
        "sampler: grid\n"
        "space:\n"
        "  activation: [relu, gelu]\n"
        "  head_width: [64, 256]\n"
        "train: {image_size: 48, weights: none}\n"
        "data: {synthetic: {faces: 10}}\n"
    )
    spec = load_spec(_write(tmp_path, grid))
    assert spec.grid["activation"] == ["relu", "gelu"]
    assert spec.n_trials == 4 and spec.heads_only
    assert spec.train_config({"activation": "gelu", "head_width": 64}).activation == "gelu"
    random = grid.replace("sampler: grid", "sampler: random\nn_trials: 4").replace(
        "[relu, gelu]", "{choices: [relu, gelu]}")
    spec = load_spec(_write(tmp_path, random, "random.yaml"))
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    assert spec.train_config(suggest_all(trial, spec.space)).activation in ("relu", "gelu")
    with pytest.raises(SpecError, match="activation"):
        load_spec(_write(tmp_path, grid.replace("[relu, gelu]", "[relu, tanh]"), "bad.yaml"))


def test_ranges(tmp_path: Path) -> None:
    space = {
        "learning_rate": {"low": 1, "high": 2},  # int ends, but a float field
        "dropout": {"low": 0, "high": 0.5, "step": 0.1},
        "epochs": {"low": 2, "high": 10, "step": 4},
        "head_width": {"low": 8, "high": 64, "log": True},
    }
    spec = load_spec(_write(tmp_path, _with(RANDOM, TRIALS, ("space", space))))
    assert spec.space == (
        FloatRange("learning_rate", 1.0, 2.0),
        FloatRange("dropout", 0.0, 0.5, step=0.1),
        IntRange("epochs", 2, 10, step=4),
        IntRange("head_width", 8, 64, log=True),
    )


def test_expw_data(tmp_path: Path) -> None:
    data = {
        "root": "data/expw", "label_file": "labels/label.lst", "margin": 0.1,
        "min_confidence": 20, "split": [0.8, 0.1, 0.1], "split_seed": 3, "strict": True,
        "cache_dir": "/tmp/cache",
    }
    spec = load_spec(_write(tmp_path, _with(("data", data))))
    config = spec.data_config(workers=2)
    assert config.root == Path("data/expw")  # relative to the working directory, as written
    assert config.label_file == Path("labels/label.lst")
    assert (config.margin, config.min_confidence, config.split) == (0.1, 20, (0.8, 0.1, 0.1))
    assert (config.split_seed, config.strict, config.workers) == (3, True, 2)
    assert config.cache_dir == Path("/tmp/cache")
    assert spec.data_config(cache_dir="elsewhere").cache_dir == Path("elsewhere")
    # The ExpW options are DataConfig's own, declared once in the trainer.
    assert isinstance(spec.data, ExpwData) and spec.data.config.margin == 0.1


def test_the_default_split_is_the_trainers(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BASE))
    assert spec.data.split == DEFAULT_SPLIT == DataConfig(Path("x")).split
    expw = load_spec(_write(tmp_path, _with(("data", {"root": "data/expw"}))))
    assert expw.data_config() == DataConfig(Path("data/expw"))


@pytest.mark.parametrize(
    ("synthetic", "root"),
    [
        ({"faces": 1400}, "data/synthetic-1400-0"),
        ({"faces": 50, "seed": 7, "imbalance": True}, "data/synthetic-50-7-imbalanced"),
    ],
)
def test_synthetic_root(tmp_path: Path, synthetic: dict[str, Any], root: str) -> None:
    spec = load_spec(_write(tmp_path, _with(("data", {"synthetic": synthetic}))))
    assert spec.data_config().root == Path(root)


def test_train_config_merges_fixed_and_trial_values(tmp_path: Path) -> None:
    spec = load_spec(_write(tmp_path, BASE))
    config = spec.train_config({"learning_rate": 0.01, "batch_size": 64})
    assert (config.learning_rate, config.batch_size) == (0.01, 64)
    assert (config.image_size, config.weights) == (48, "none")


@pytest.mark.parametrize("changes, heads_only", [
    ((), True),
    ((("space.trainable_blocks", [0, 1]),), False),  # one choice fine-tunes
    ((RANDOM, TRIALS, ("space.trainable_blocks", {"low": 0, "high": 2})), False),  # one end
    ((("train.augment", True),), False),
    ((("space.early_stopping_patience", [0]),), True),
])
def test_heads_only_when_every_value_trains_only_a_head(tmp_path: Path, changes,
                                                        heads_only: bool) -> None:
    assert load_spec(_write(tmp_path, _with(*changes))).heads_only is heads_only


def test_redacted_text_hides_passwords(tmp_path: Path) -> None:
    url = "postgresql+psycopg2://optuna:s3cret@db:5432/optuna"
    spec = load_spec(_write(tmp_path, _with(("storage", url))))
    assert spec.storage == url
    assert "s3cret" in spec.text
    assert "s3cret" not in spec.redacted_text
    assert "optuna:***@db" in spec.redacted_text


def test_spec_error_is_a_search_error() -> None:
    error = SpecError("a.yaml", "space.epochs", "an integer >= 1", 0, line=3)
    assert isinstance(error, SearchError)
    assert str(error) == "a.yaml:3: space.epochs: expected an integer >= 1, but got 0"


# --------------------------------------------------------------------------------- bad specs

BAD_SPECS = {
    # unknown keys, at every level
    "unknown top key": (_with(("colour", 1)), "colour", "colour"),
    "space key not a trainer field": (
        _with(("space.learnig_rate", [0.1])), "space.learnig_rate", "learning_rate"
    ),
    "unknown train key": (_with(("train.foo", 1)), "train.foo", "foo"),
    "unknown synthetic key": (
        _with(("data.synthetic.colour", "red")), "data.synthetic.colour", "colour"
    ),
    "unknown range key": (
        _with(RANDOM, TRIALS, ("space.learning_rate", {"low": 0.1, "high": 1, "scale": "log"})),
        "space.learning_rate.scale", "scale",
    ),
    "expw key with synthetic data": (_with(("data.label_file", "x")), "data.label_file", "label"),
    "unknown registry key": (_with(("registry", {"model": "m"})), "registry.model", "model"),
    "misspelt key before missing key": (  # samplr is unknown and sampler missing: say the first
        _with(("sampler", _DELETE), ("samplr", "grid")), "samplr", "did you mean 'sampler'?"
    ),
    "key not a string": (_with(("space", {1: [32]})), "space[1]", "an unknown key 1"),
    "unknown choices key": (
        _with(("space.batch_size", {"choices": [32], "step": 1})), "space.batch_size.step", "step"
    ),
    # wrong types
    "seed is a string": (_with(("seed", "zero")), "seed", "'zero'"),
    "seed is negative": (_with(("seed", -1)), "seed", "-1"),
    "space is a list": (_with(("space", ["learning_rate"])), "space", "['learning_rate']"),
    "space value is a scalar": (
        _with(("space.learning_rate", 0.001)), "space.learning_rate", "0.001"
    ),
    "space value is null": (_with(("space.learning_rate", None)), "space.learning_rate", "None"),
    "n_trials is a string": (_with(("n_trials", "3")), "n_trials", "'3'"),  # nothing coerced
    "timeout is infinite": (_with(("timeout", float("inf"))), "timeout", "inf"),
    "range end is nan": (
        _with(RANDOM, TRIALS, ("space.dropout", {"low": float("nan"), "high": 0.5})),
        "space.dropout.low", "nan",
    ),
    "grid value is a list": (_with(("space.batch_size", [[32]])), "space.batch_size[0]", "[32]"),
    "bool for an int": (_with(("space.batch_size", [True])), "space.batch_size[0]", "True"),
    "train is a list": (_with(("train", [1])), "train", "[1]"),
    "log is a string": (
        _with(RANDOM, TRIALS, ("space.learning_rate", {"low": 0.1, "high": 1, "log": "yes!"})),
        "space.learning_rate.log", "yes!",
    ),
    "range end is a string": (
        _with(RANDOM, TRIALS, ("space.learning_rate", {"low": "small", "high": 1})),
        "space.learning_rate.low", "small",
    ),
    "strict is a string": (
        _with(("data", {"root": "data/expw", "strict": "yes"})), "data.strict", "'yes'"
    ),
    "root is a number": (_with(("data", {"root": 5})), "data.root", "5"),
    "storage is not a url": (_with(("storage", "studies/optuna.db")), "storage", "optuna.db"),
    "tracking_uri is empty": (_with(("tracking_uri", "")), "tracking_uri", "''"),
    # empty things
    "empty grid list": (_with(("space.batch_size", [])), "space.batch_size", "[]"),
    "empty choices": (
        _with(("space.batch_size", {"choices": []})), "space.batch_size.choices", "[]"
    ),
    "empty space": (_with(("space", {})), "space", "{}"),
    "missing data": (_with(("data", _DELETE)), "data", "nothing"),
    "missing sampler": (_with(("sampler", _DELETE)), "sampler", "nothing"),
    "missing faces": (_with(("data.synthetic", {"seed": 1})), "data.synthetic.faces", "nothing"),
    # the trainer's rules
    "batch_size < 1": (_with(("space.batch_size", [32, 0])), "space.batch_size[1]", "0"),
    "image_size < 32": (_with(("train.image_size", 16)), "train.image_size", "16"),
    "unknown pooling choice": (_with(("space.pooling", ["max"])), "space.pooling[0]", "'max'"),
    "unknown precision": (_with(("train.precision", "bfloat16")), "train.precision",
                          "'bfloat16'"),
    "dropout range reaches 1": (
        _with(RANDOM, TRIALS, ("space.dropout", {"low": 0.0, "high": 1.0})),
        "space.dropout.high", "1.0",
    ),
    "int field with float ends": (
        _with(RANDOM, TRIALS, ("space.batch_size", {"low": 8.0, "high": 64})),
        "space.batch_size.low", "8.0",
    ),
    "bad weights choice": (
        _with(("train.weights", _DELETE), ("space.weights", ["none", ""])),
        "space.weights[1]", "''",
    ),
    # ranges
    "low > high": (
        _with(RANDOM, TRIALS, ("space.learning_rate", {"low": 0.1, "high": 0.01})),
        "space.learning_rate", "low=0.1, high=0.01",
    ),
    "log with low <= 0": (
        _with(RANDOM, TRIALS, ("space.learning_rate", {"low": 0.0, "high": 0.1, "log": True})),
        "space.learning_rate.low", "0.0",
    ),
    "log and step": (
        _with(RANDOM, TRIALS, ("space.epochs", {"low": 1, "high": 9, "log": True, "step": 2})),
        "space.epochs.step", "2",
    ),
    "int step does not divide": (
        _with(RANDOM, TRIALS, ("space.epochs", {"low": 1, "high": 10, "step": 4})),
        "space.epochs.step", "4",
    ),
    "float step does not divide": (
        _with(RANDOM, TRIALS, ("space.dropout", {"low": 0.0, "high": 0.5, "step": 0.2})),
        "space.dropout.step", "0.2",
    ),
    "range without high": (
        _with(RANDOM, TRIALS, ("space.epochs", {"low": 1})), "space.epochs.high", "nothing"
    ),
    "grid with a range": (
        _with(("space.learning_rate", {"low": 0.001, "high": 0.1})),
        "space.learning_rate", "'low': 0.001",
    ),
    "grid with a range that is wrong too": (  # the grid's rule first: no range at all
        _with(("space.learning_rate", {"low": 0.1, "high": 0.01})),
        "space.learning_rate", "(sampler grid cannot search a range)",
    ),
    "duplicate grid value": (_with(("space.batch_size", [32, 32])), "space.batch_size[1]", "32"),
    # space and train
    "searched and fixed": (
        _with(("train.learning_rate", 0.5)), "train.learning_rate", "space.learning_rate"
    ),
    # budget
    "negative n_trials": (_with(("n_trials", -1)), "n_trials", "-1"),
    "zero n_trials": (_with(RANDOM, ("n_trials", 0)), "n_trials", "0"),
    "negative timeout": (_with(("timeout", -5)), "timeout", "-5"),
    "timeout is a string": (_with(("timeout", "1h")), "timeout", "'1h'"),
    "zero trial_timeout": (_with(("trial_timeout", 0)), "trial_timeout", "0"),
    "negative trial_timeout": (_with(("trial_timeout", -1.5)), "trial_timeout", "-1.5"),
    "trial_timeout is a string": (_with(("trial_timeout", "10m")), "trial_timeout", "'10m'"),
    "trial_timeout is true": (_with(("trial_timeout", True)), "trial_timeout", "True"),
    "trial_timeout is a list": (_with(("trial_timeout", [60])), "trial_timeout", "[60]"),
    "grid n_trials above grid": (_with(("n_trials", 5)), "n_trials", "5"),
    "random without a budget": (_with(RANDOM), "n_trials", "nothing"),
    "max_consecutive_failures 0": (
        _with(("max_consecutive_failures", 0)), "max_consecutive_failures", "0"
    ),
    # choices
    "unknown sampler": (_with(("sampler", "annealing")), "sampler", "'annealing'"),
    "unknown metric": (_with(("metric", "accuracy")), "metric", "'accuracy'"),
    "unknown direction": (_with(("direction", "up")), "direction", "'up'"),
    "unknown pruner": (_with(("pruner", "asha")), "pruner", "'asha'"),
    # data
    "synthetic and root": (
        _with(("data", {"synthetic": {"faces": 10}, "root": "data/expw"})), "data", "both"
    ),
    "neither synthetic nor root": (_with(("data", {"cache_dir": ".c"})), "data", "neither"),
    "data is a string": (_with(("data", "data/expw")), "data", "'data/expw'"),
    "split does not sum to 1": (
        _with(("data.split", [0.5, 0.5, 0.5])), "data.split", "[0.5, 0.5, 0.5]"
    ),
    "split of two": (_with(("data.split", [0.9, 0.1])), "data.split", "[0.9, 0.1]"),
    "split is a string": (_with(("data.split", "70/10/20")), "data.split", "70/10/20"),
    "margin above 1": (_with(("data", {"root": "d", "margin": 2})), "data.margin", "2"),
    "faces 0": (_with(("data.synthetic.faces", 0)), "data.synthetic.faces", "0"),
    "fewer faces than classes": (_with(("data.synthetic.faces", 6)), "data.synthetic.faces", "6"),
    # names
    "bad study name": (_with(("name", "my study")), "name", "'my study'"),
    "bad model name": (
        _with(("registry", {"model_name": "expw/vgg"})), "registry.model_name", "expw/vgg"
    ),
}


@pytest.mark.parametrize(("spec", "field", "found"), BAD_SPECS.values(), ids=BAD_SPECS.keys())
def test_bad_spec(tmp_path: Path, spec: dict[str, Any], field: str, found: str) -> None:
    path = _write(tmp_path, spec, "bad-spec.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert "bad-spec.yaml" in message
    assert f": {field}: expected " in message
    assert found in message
    assert caught.value.field == field
    assert caught.value.line is not None


BAD_TEXTS = {
    "not yaml": ("sampler: grid\nspace: [1, 2\n", None, "valid YAML"),
    "tab indentation": ("sampler: grid\n\tspace: 1\n", None, "valid YAML"),
    "two documents": ("sampler: grid\n---\nsampler: tpe\n", None, "a single document"),
    "top level list": ("- 1\n- 2\n", "(top level)", "[1, 2]"),
    "top level scalar": ("just words\n", "(top level)", "'just words'"),
    "empty file": ("# nothing here\n", "(top level)", "an empty document"),
    "duplicate key": ("sampler: grid\nseed: 1\nsampler: tpe\n", "sampler", "first on line 1"),
    "python tag": ("sampler: !!python/name:os.system\n", None, "valid YAML"),
}


@pytest.mark.parametrize(("text", "field", "found"), BAD_TEXTS.values(), ids=BAD_TEXTS.keys())
def test_bad_text(tmp_path: Path, text: str, field: str | None, found: str) -> None:
    path = _write(tmp_path, text, "bad-text.yaml")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    message = str(caught.value)
    assert message.startswith(str(path))
    assert found in message
    assert caught.value.field == field


def test_yaml_syntax_error_reports_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "sampler: grid\nseed: 0\nspace: {a: [1, 2}\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.line == 3
    assert str(caught.value).startswith(f"{path}:3: expected valid YAML, but got ")


def test_error_points_at_the_line(tmp_path: Path) -> None:
    text = (
        "sampler: grid\n"
        "space:\n"
        "  learning_rate: [0.1]\n"
        "  batch_size:\n"
        "    - 32\n"
        "    - -4\n"
        "data: {synthetic: {faces: 10}}\n"
    )
    path = _write(tmp_path, text)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.line == 6
    assert str(caught.value) == (
        f"{path}:6: space.batch_size[1]: expected an integer >= 1, but got -4"
    )


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpecError, match="nope.yaml: expected an existing study spec file"):
        load_spec(path)


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="a directory"):
        load_spec(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin.yaml"
    path.write_bytes("name: caf\u00e9\n".encode("latin-1"))
    with pytest.raises(SpecError, match="latin.yaml: expected a UTF-8 text file"):
        load_spec(path)


def test_stem_that_is_not_a_name(tmp_path: Path) -> None:
    path = _write(tmp_path, BASE, "my study.yaml")
    with pytest.raises(SpecError, match=r"name: .*set name: explicitly.*'my study'"):
        load_spec(path)
    named = _with(("name", "my-study"))
    assert load_spec(_write(tmp_path, named, "my study.yaml")).name == "my-study"


def test_storage_password_is_masked_in_errors(tmp_path: Path) -> None:
    spec = _with(("storage", "postgres:user:s3cret@db"))  # no "://": not a URL
    with pytest.raises(SpecError) as caught:
        load_spec(_write(tmp_path, spec))
    assert caught.value.field == "storage"
    assert "s3cret" not in str(caught.value)
    assert "user:***@db" in str(caught.value)
    spec = _with(("storage", 5))
    with pytest.raises(SpecError, match="storage: expected a database URL"):
        load_spec(_write(tmp_path, spec))


def test_weight_decay_is_searchable_and_reaches_the_trainer(tmp_path):
    """A new TrainConfig field is a spec key, an Optuna param and an MLflow param at once."""
    path = tmp_path / "wd.yaml"
    path.write_text(
        "sampler: grid\nspace:\n  weight_decay: [0.0, 1.0e-4]\n"
        "train: {weights: none, image_size: 32}\ndata: {synthetic: {faces: 140}}\n"
    )
    spec = load_spec(path)
    assert spec.grid == {"weight_decay": [0.0, 1.0e-4]}
    config = spec.train_config({"weight_decay": 1.0e-4})
    assert config.weight_decay == 1.0e-4 and config.to_dict()["weight_decay"] == 1.0e-4


def test_precision_is_a_train_key_and_a_searched_one(tmp_path):
    path = tmp_path / "precision.yaml"
    path.write_text(
        "sampler: grid\nspace:\n  precision: [float32, mixed_bfloat16]\n"
        "train: {weights: none, image_size: 32}\ndata: {synthetic: {faces: 140}}\n"
    )
    spec = load_spec(path)
    assert spec.grid == {"precision": ["float32", "mixed_bfloat16"]}
    config = spec.train_config({"precision": "mixed_bfloat16"})
    assert config.to_dict()["precision"] == "mixed_bfloat16"
    assert spec.train_config().precision == "float32"
