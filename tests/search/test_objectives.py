"""Objectives and constraints (issue 32, part 3): a study that trades accuracy against a model's
costs. The spec's sections name their faults; a two-objective grid over image_size reports its
Pareto front (equal to the one computed here by hand), each trial's costs are MLflow metrics of
its run, and a constrained promotion registers a less accurate but compliant model, saying what
it traded.

Costs are measured by `trainer.model_costs` (seconds per model shape); most tests put a fake in
its place (`_fake_costs`: a latency that grows with image_size and head_width), one measures.
"""

from __future__ import annotations

import re
import warnings

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from rich.console import Console

import trainer
from search import settings
from search.cli.main import main
from search.cli.objective_tables import front_table
from search.cli.progress import leaderboard_table, trials_table
from search.contracts import COSTS_ATTR, FEASIBLE_TAG
from search.errors import InputError, SpecError
from search.registry.choice import choose
from search.spec.loader import load_spec
from search.study.loop import run_study
from search.study.setup import make_sampler
from search.tracking import pareto
from search.tracking.report import refresh
from search.tracking.runs import Tracker
from tests.search.studyhelp import SPEC, urls, write_spec
from trainer.costs import ModelCosts

# With a random VGG16 base (weights none) a head learns little but the classes' frequencies:
# on imbalanced faces, class_weight none and balanced score apart (a trade to promote).
GRID = {"image_size": [32, 36], "head_width": [16, 64], "class_weight": ["none", "balanced"],
        "learning_rate": [1.0e-2], "batch_size": [32], "epochs": [10]}
TRAIN = {"weights": "none", "dropout": 0.1, "seed": 0}
DATA = {"synthetic": {"faces": 140, "seed": 0, "imbalance": True}, "cache_dir": ".cache"}
TWO = [{"name": "val_accuracy", "direction": "maximize"},
       {"name": "latency_ms_b1", "direction": "minimize"}]
BOUND = 18.5  # latency_ms_b1 <= 18.5: the fake's 36 px models with 64 units break it


def _latency(config) -> float:
    return config.image_size / 2 + config.head_width / 64


def _write(folder, name: str, **changes):
    """studyhelp's spec with `changes`, without its `metric` beside `objectives` (unless the
    change says one)."""
    spec = {**SPEC, **changes}
    if "objectives" in changes and "metric" not in changes:
        del spec["metric"]
    path = folder / "studies" / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def _fake_costs(latency=_latency):
    calls = []

    def model_costs(config, cache_dir, *, cache_lock=None) -> ModelCosts:
        calls.append(config)
        params = 14_714_688 + 512 * config.head_width + 7 * config.head_width
        return ModelCosts(latency_ms_b1=latency(config), latency_ms_b32=latency(config) / 4,
                          params=params, size_mb=params * 4 / 1e6, protocol="fake, for tests")

    model_costs.calls = calls
    return model_costs


# ------------------------------------------------------------------------------------- spec


def _spec(tmp_path, **changes):
    return _write(tmp_path, "goals", **{"space": GRID, "train": TRAIN, **changes})


def test_objectives_and_constraints_are_read_with_their_defaults(tmp_path):
    spec = load_spec(_spec(tmp_path, objectives=[{"name": "val_macro_f1"},
                                                  {"name": "size_mb"}],
                           constraints={"latency_ms_b1": {"max": 20}, "val_accuracy":
                                        {"min": 0.2, "max": 0.9}},
                           sampler="nsga2", n_trials=4))
    assert spec.multi_objective and spec.sampler == "nsga2"
    assert [(o.name, o.direction) for o in spec.objectives] == [
        ("val_macro_f1", "maximize"), ("size_mb", "minimize")]
    assert (spec.metric, spec.direction) == ("val_macro_f1", "maximize")  # the first metric
    latency, accuracy = spec.constraints
    assert latency.values(25.0) == {"latency_ms_b1 <= 20": 5.0}
    assert accuracy.values(0.5) == {"val_accuracy >= 0.2": -0.3, "val_accuracy <= 0.9": -0.4}


@pytest.mark.parametrize("changes, field, found", [
    ({"objectives": [{"name": "val_accuracy"}]}, "objectives", "val_accuracy"),
    ({"objectives": [{"name": "val_accuracy"}, {"name": "latency"}]}, "objectives[1].name",
     "'latency'"),
    ({"objectives": [{"name": "val_accuracy"}, {"name": "val_accuracy"}]}, "objectives[1].name",
     "'val_accuracy'"),
    ({"objectives": [{"name": "params"}, {"name": "size_mb"}]}, "objectives", "params, size_mb"),
    ({"objectives": [{"name": "val_accuracy", "direction": "up"}, {"name": "size_mb"}]},
     "objectives[0].direction", "'up'"),
    ({"objectives": TWO, "direction": "maximize"}, "direction", "'maximize'"),
    ({"objectives": TWO, "pruner": "median"}, "pruner", "'median'"),
    ({"constraints": {"latency_ms_b1": {"max": 20}}, "pruner": "hyperband"}, "pruner",
     "'hyperband'"),
    ({"constraints": {"latency_ms": {"max": 20}}}, "constraints.latency_ms",
     "did you mean 'latency_ms_b1'"),
    ({"constraints": {"size_mb": {}}}, "constraints.size_mb", "neither"),
    ({"constraints": {"params": {"min": 3, "max": 2}}}, "constraints.params", "min=3, max=2"),
    ({"constraints": {"size_mb": {"max": "60"}}}, "constraints.size_mb.max", "'60'"),
    ({"constraints": {"size_mb": {"most": 60}}}, "constraints.size_mb.most", "'most'"),
])
def test_a_bad_section_names_its_field_and_exits_2(tmp_path, capsys, changes, field, found):
    path = _spec(tmp_path, **changes)
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.field == field, str(caught.value)
    assert found in caught.value.found_text, str(caught.value)
    assert re.match(rf"{re.escape(str(path))}:\d+: ", str(caught.value))  # the file and line
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert field in err and "Traceback" not in err


def test_a_metric_beside_objectives_is_refused(tmp_path):
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(tmp_path, objectives=TWO, metric="val_accuracy"))
    assert caught.value.field == "metric"
    assert "no metric beside objectives" in str(caught.value)


# --------------------------------------------------------------------- a two-objective grid


@pytest.fixture(scope="module")
def pareto_grid(tmp_path_factory):
    """A two-objective grid (val_accuracy, latency_ms_b1 <= 18.5) over image_size [32, 36] x
    head_width x class_weight, run to its end with fake costs: (folder, URLs, study, fake)."""
    from trainer.runtime import load_tensorflow

    folder = tmp_path_factory.mktemp("pareto")
    where = urls(folder)
    fake = _fake_costs()
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(trainer, "model_costs", fake)
        load_tensorflow()
        path = _write(folder, "pareto", space=GRID, train=TRAIN, data=DATA, objectives=TWO,
                      constraints={"latency_ms_b1": {"max": BOUND}})
        summary = run_study(load_spec(path), **where)
        assert summary.count(TrialState.COMPLETE) == 8, summary.stopped_because
        study = optuna.load_study(study_name="pareto", storage=where["storage_url"])
        yield folder, where, study, fake


@pytest.fixture
def in_grid(pareto_grid, monkeypatch):
    monkeypatch.chdir(pareto_grid[0])
    return pareto_grid


def _by_hand(trials):
    """The Pareto front of (maximize accuracy, minimize latency) among feasible trials."""
    feasible = [t for t in trials if all(c <= 0 for c in t.constraints.values())]
    front = []
    for t in feasible:
        beaten = False
        for u in feasible:
            if u is t:
                continue
            as_good = u.values[0] >= t.values[0] and u.values[1] <= t.values[1]
            better = u.values[0] > t.values[0] or u.values[1] < t.values[1]
            beaten = beaten or (as_good and better)
        if not beaten:
            front.append(t.number)
    return sorted(front)


def test_a_two_objective_grid_reports_its_pareto_front(in_grid, tmp_path):
    folder, where, study, fake = in_grid
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["val_accuracy", "latency_ms_b1"]
    for trial in trials:  # told [accuracy, latency]; the bound set as an Optuna constraint
        config = trainer.TrainConfig.from_dict({**TRAIN, **trial.params})
        assert trial.values[1] == _latency(config)
        assert trial.constraints == {"latency_ms_b1 <= 18.5": _latency(config) - BOUND}
        assert trial.user_attrs[COSTS_ATTR]["latency_ms_b1"] == _latency(config)
    slow = {t.number for t in trials
            if (t.params["image_size"], t.params["head_width"]) == (36, 64)}
    assert slow == {t.number for t in trials if pareto.broken(t)} and len(slow) == 2
    expected = _by_hand(trials)
    assert expected and sorted(t.number for t in pareto.front(study)) == expected

    report = refresh(study, Tracker(where["tracking_uri"]), out_dir=tmp_path)
    assert "pareto_front.png" in report.plots
    assert (tmp_path / "plots" / "pareto_front.png").stat().st_size > 0
    table = report.description.split("### Pareto front")[1]
    shown = [int(n) for n in re.findall(r"^\| (\d+) \|.*\| yes \|$", table, re.MULTILINE)]
    assert sorted(shown) == expected
    assert "maximize `val_accuracy`, minimize `latency_ms_b1`" in report.description
    assert f"of {len(trials)} complete trials meet them all" in report.description

    status = _text(front_table(study))  # what `fer-search status` prints below the trials
    rows = [int(n) for n in re.findall(r"^│\s+(\d+) │.*│ yes\s+│$", status, re.MULTILINE)]
    assert sorted(rows) == expected
    assert _text(leaderboard_table(study, "val_accuracy")) == status  # the front, not a ranking
    every = _text(trials_table(study))
    assert "latency_ms_b1" in every and "no: latency_ms_b1 <= 18.5" in every


def _text(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_a_grid_over_image_size_keeps_a_feature_cache_per_size(in_grid):
    folder, *_ = in_grid
    # One feature file per split and image size (the base's input side is in the key).
    assert len(list((folder / ".cache" / "features").glob("train-*.npy"))) == 2
    assert {config.image_size for config in in_grid[3].calls} == {32, 36}


def test_each_trial_run_shows_its_costs_as_mlflow_metrics(in_grid):
    from mlflow import MlflowClient

    folder, where, study, _ = in_grid
    client = MlflowClient(where["tracking_uri"])
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        for name in trainer.COST_NAMES:
            assert run.data.metrics[name] == trial.user_attrs[COSTS_ATTR][name]
        assert run.data.tags[FEASIBLE_TAG] == str(not pareto.broken(trial)).lower()
    parent = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert parent.data.params["objectives"] == "maximize val_accuracy, minimize latency_ms_b1"
    assert parent.data.params["constraints"] == "latency_ms_b1 <= 18.5"
    assert "best_latency_ms_b1" in parent.data.metrics


def test_a_constrained_promotion_registers_a_less_accurate_compliant_model(in_grid):
    """The grid again as a one-metric study with a latency bound (answered from the epoch
    record), the fake's latency over the bound for every configuration that scored the best
    accuracy above: `promote` registers the best of the others, and says what it traded."""
    from mlflow import MlflowClient

    from search.registry.promotion import promote

    folder, where, study, _ = in_grid
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    top = max(t.values[0] for t in trials)
    assert any(t.values[0] < top for t in trials)  # the accuracies differ: there is a trade
    fastest = {_key(t.params) for t in trials if t.values[0] == top}

    def latency(config) -> float:
        return 30.0 if _key(config.to_dict()) in fastest else 10.0

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(trainer, "model_costs", _fake_costs(latency))
        path = write_spec(folder, "bounded", space=GRID, train=TRAIN, data=DATA,
                          constraints={"latency_ms_b1": {"max": 20}},
                          registry={"model_name": "expw-bounded"})
        run_study(load_spec(path), **where)
    bounded = optuna.load_study(study_name="bounded", storage=where["storage_url"])
    best_overall = max(bounded.get_trials(states=(TrialState.COMPLETE,)),
                       key=lambda t: (t.value, -t.number))
    assert best_overall.value == top and pareto.broken(best_overall)

    result = promote("bounded", **where)
    chosen = bounded.get_trials()[result.trial_number]
    assert not pareto.broken(chosen) and chosen.value < top
    board = _text(leaderboard_table(bounded, "val_accuracy"))  # compliant trials ranked first
    first = re.search(r"^│\s+1 │\s+(\d+) │.*│\s+(yes|no: .*?) │\s+[\d.]+ │$", board, re.MULTILINE)
    assert first and int(first[1]) == chosen.number and first[2] == "yes", board
    assert chosen.value == max(t.value for t in bounded.get_trials(states=(TrialState.COMPLETE,))
                               if not pareto.broken(t))
    version = MlflowClient(where["tracking_uri"]).get_model_version("expw-bounded",
                                                                    str(result.version))
    assert version.tags["promotion_rule"] == "best-feasible"
    assert f"trial {chosen.number}, by rule best-feasible" in version.description
    assert (f"the best val_accuracy overall, trial {best_overall.number} ({top:.4f}), breaks "
            f"latency_ms_b1 <= 20 (30 ms)") in version.description
    assert result.chosen in version.description


def test_a_warm_start_from_a_two_objective_study_queues_its_best_compliant_first(in_grid):
    folder, where, study, _ = in_grid
    path = _write(folder, "pareto-again", space=GRID, train=TRAIN, data=DATA, objectives=TWO,
                  constraints={"latency_ms_b1": {"max": BOUND}},
                  warm_start={"study": "pareto", "top": 2})
    # One trial a claim: a claim also takes the first point's same-key mates (one pass), which
    # would put a queued-first point of another image size behind them.
    with settings.override(FER_SEARCH_MAX_GROUP=1):
        summary = run_study(load_spec(path), n_trials=2, **where)
    assert summary.warm_start == "warm start from pareto: 2 queued first"
    earlier = sorted((t for t in study.get_trials(states=(TrialState.COMPLETE,))
                      if not pareto.broken(t)), key=lambda t: (-t.values[0], t.number))
    again = optuna.load_study(study_name="pareto-again", storage=where["storage_url"])
    ran = sorted(again.get_trials(states=(TrialState.COMPLETE,)), key=lambda t: t.number)
    assert [t.params for t in ran] == [t.params for t in earlier[:2]]
    assert [t.values for t in ran] == [t.values for t in earlier[:2]]  # from the epoch record


def test_nsga2_asks_a_two_objective_study_its_trials(in_grid):
    folder, where, *_ = in_grid
    path = _write(folder, "evolved", space=GRID, train=TRAIN, data=DATA, objectives=TWO,
                  sampler="nsga2", n_trials=3)
    spec = load_spec(path)
    assert isinstance(make_sampler(spec), optuna.samplers.NSGAIISampler)
    summary = run_study(spec, **where)
    assert summary.count(TrialState.COMPLETE) == 3, summary.stopped_because
    study = optuna.load_study(study_name="evolved", storage=where["storage_url"])
    assert all(len(t.values) == 2 for t in study.trials)


def _key(params: dict) -> tuple:
    return tuple(params[name] for name in ("image_size", "head_width", "class_weight"))


def test_no_compliant_trial_is_one_line_and_exit_2_with_nothing_registered(in_grid, capsys):
    folder, where, study, _ = in_grid
    name = "all-too-slow"
    copy = optuna.create_study(study_name=name, storage=where["storage_url"],
                               directions=["maximize", "minimize"])
    copy.add_trials([optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=t.values, params=t.params,
        distributions=t.distributions, constraints={"latency_ms_b1 <= 1": t.values[1] - 1})
        for t in study.get_trials(states=(TrialState.COMPLETE,))])
    code = main(["promote", name, "--storage", where["storage_url"],
                 "--tracking-uri", where["tracking_uri"]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "none of its 8 complete trials meets every constraint" in err
    assert "latency_ms_b1 <= 1: broken by 8" in err and "--rule best" in err


# ------------------------------------------------------------------------------ the rules


def _study(rows, directions=("maximize", "minimize")):
    """An in-memory study of complete trials (values, constraint value or None)."""
    study = optuna.create_study(directions=list(directions))
    if len(directions) > 1:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_accuracy", "latency_ms_b1"])
    for values, excess in rows:
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.COMPLETE, values=values,
            constraints=None if excess is None else {"latency_ms_b1 <= 20": excess},
            user_attrs={COSTS_ATTR: {"latency_ms_b1": values[-1] if len(values) > 1 else 5.0}}))
    return study


def test_the_rules_choose_and_say_what_they_traded():
    study = _study([([0.40, 12.0], -8.0), ([0.45, 31.0], 11.0), ([0.38, 9.0], -11.0)])
    feasible = choose(study, "sqlite:///x.db")
    assert feasible.trial.number == 0 and feasible.rule == "best-feasible"
    assert feasible.note == (
        "trial 0, by rule best-feasible (the best val_accuracy among the trials that meet every "
        "constraint): val_accuracy 0.4000, latency_ms_b1 12 ms; the best val_accuracy overall, "
        "trial 1 (0.4500), breaks latency_ms_b1 <= 20 (31 ms).")
    anyway = choose(study, "sqlite:///x.db", "best")
    assert anyway.trial.number == 1
    assert anyway.note.endswith("breaks latency_ms_b1 <= 20 (31 ms).")
    named = choose(study, "sqlite:///x.db", named=study.trials[2])
    assert named.rule == "trial" and "named by --trial" in named.note
    with pytest.raises(InputError, match="--rule: expected one of best-feasible, best"):
        choose(study, "sqlite:///x.db", "fastest")


def test_the_front_and_what_the_constraints_rule_out():
    study = _study([([0.40, 12.0], -8.0), ([0.45, 31.0], 11.0), ([0.38, 9.0], -11.0),
                    ([0.30, 12.0], -8.0), ([0.50, 40.0], 20.0), ([0.44, 35.0], 15.0)])
    assert [t.number for t in pareto.front(study)] == [0, 2]  # best accuracy first; 3 is beaten
    rows = pareto.rows(study)
    assert [(r.number, r.feasible) for r in rows] == [(0, True), (2, True), (4, False),
                                                      (1, False)]  # 5 is beaten by 1
    assert rows[2].breaks == ("latency_ms_b1 <= 20",)
    lines = "\n".join(pareto.front_lines(study))
    assert "| 4 | 0.5000 | 40 | no: breaks latency_ms_b1 <= 20 |" in lines


def test_a_study_without_constraints_promotes_its_best_trial_as_before():
    study = _study([([0.40], None), ([0.45], None)], directions=("maximize",))
    choice = choose(study, "sqlite:///x.db")
    assert choice.trial.number == 1 and "overall" not in choice.note


def test_no_complete_trial_and_no_compliant_trial_are_input_errors():
    with pytest.raises(InputError, match="no complete trial to promote yet"):
        choose(optuna.create_study(), "sqlite:///x.db")
    with pytest.raises(InputError, match="none of its 1 complete trials"):
        choose(_study([([0.4, 25.0], 5.0)]), "sqlite:///x.db")


# ------------------------------------------------------------------- the real measurement


def test_costs_are_measured_once_per_shape_and_recorded(in_grid, monkeypatch):
    """`trainer.model_costs` itself (its protocol cut to a few calls per batch size, to keep
    the test short), on one 32 px trial of the grid's data: its costs in the trial, the run and
    the cache folder."""
    from mlflow import MlflowClient

    from trainer import costs
    from trainer.network import latency

    folder, where, *_ = in_grid
    monkeypatch.setattr(trainer, "model_costs", costs.model_costs)  # the real one
    monkeypatch.setattr(latency, "PROTOCOL", latency.Protocol(batches=((1, 1, 3), (32, 1, 1))))
    space = {**GRID, "image_size": [32], "head_width": [16], "class_weight": ["none"],
             "epochs": [1]}
    path = write_spec(folder, "measured", space=space, train=TRAIN, data=DATA,
                      constraints={"size_mb": {"max": 1000}})
    run_study(load_spec(path), **where)
    (trial,) = optuna.load_study(study_name="measured", storage=where["storage_url"]).trials
    found = trial.user_attrs[COSTS_ATTR]
    assert all(found[name] > 0 for name in trainer.COST_NAMES)
    assert "median of 3 calls" in found["protocol"]
    assert trial.constraints == {"size_mb <= 1000": found["size_mb"] - 1000}
    run = MlflowClient(where["tracking_uri"]).get_run(trial.user_attrs["mlflow_run_id"])
    assert run.data.metrics["latency_ms_b1"] == found["latency_ms_b1"]
    assert len(list((folder / ".cache" / "costs").glob("*.json"))) == 1
