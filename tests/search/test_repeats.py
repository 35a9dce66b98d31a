"""Repeats (issue 32, part 1): ``repeats: N`` trains each configuration with N seeds, one trial
whose value is their mean; the spread reaches the trial's attrs, its MLflow run, the leaderboard
and the report; promotion registers the representative seed; pruning, resume and a failing seed
act on the trial as one."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

import numpy as np
import optuna
import pytest
from mlflow import MlflowClient
from optuna.trial import TrialState
from rich.console import Console

import trainer
from search.cli.main import main
from search.cli.progress import leaderboard_table, trials_table
from search.registry.promotion import promote
from search.spec.loader import load_spec
from search.study import setup as study_setup
from search.study.loop import run_study
from search.tracking.runs import Tracker, seed_weights_artifact
from search.tracking.spread import LEGEND, Spread, marks, report_lines, within_noise
from tests.search.studyhelp import SPEC, urls, write_spec
from tests.search.test_resume import SPACE as RESUME_SPACE
from tests.search.test_resume import assert_resumed_like_uninterrupted
from trainer.heads import engine as head_engine

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SPACE = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [2],
         "head_width": [16]}
SEEDS = [0, 1, 2]


def _trials(name: str, where: dict) -> list:
    return optuna.load_study(study_name=name, storage=where["storage_url"]).get_trials()


def _shown(table) -> str:
    console = Console(width=300, record=True)
    console.print(table)
    return console.export_text()


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
    """A two-point grid with `repeats: 3`, run once for the module (its folder the working
    directory meanwhile), and where it lives."""
    folder = tmp_path_factory.mktemp("repeats")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        from trainer.runtime import load_tensorflow

        load_tensorflow()
        spec_path = write_spec(folder, name="rep", repeats=3, space=SPACE)
        where = urls(folder)
        run_study(load_spec(spec_path), **where)
        yield folder, where


@pytest.fixture
def project(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ----------------------------------------------------------------------------- values


def test_three_repeats_are_three_one_seed_trainings_and_their_mean(repeated, project):
    """Each trial's attrs hold the three seeds' values, its value is their mean, and those are
    the numbers of three one-seed trials (a `repeats: 1` grid with `seed` as an axis, in a
    folder and caches of its own): the same values, per-epoch means and weights."""
    folder, where = repeated
    trials = _trials("rep", where)
    assert len(trials) == 2 and all(t.state == TrialState.COMPLETE for t in trials)

    train = {k: v for k, v in SPEC["train"].items() if k != "seed"}
    alone_path = write_spec(project, name="alone", space={**SPACE, "seed": SEEDS}, train=train)
    alone_where = urls(project)
    run_study(load_spec(alone_path), **alone_where)
    alone = {(t.params["learning_rate"], t.params["seed"]): t
             for t in _trials("alone", alone_where)}
    assert len(alone) == 6 and all(t.state == TrialState.COMPLETE for t in alone.values())

    client = MlflowClient(where["tracking_uri"])
    tracker, alone_tracker = Tracker(where["tracking_uri"]), Tracker(alone_where["tracking_uri"])
    for trial in trials:
        lr, attrs = trial.params["learning_rate"], trial.user_attrs
        ones = [alone[(lr, seed)] for seed in SEEDS]
        assert attrs["repeat_seeds"] == SEEDS
        assert attrs["repeat_values"] == [t.value for t in ones]  # bit for bit
        values = attrs["repeat_values"]
        assert trial.value == math.fsum(values) / 3
        assert attrs["repeat_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
        assert (attrs["repeat_min"], attrs["repeat_max"]) == (min(values), max(values))
        mean = trial.value
        rep = attrs["repeat_representative"]
        assert abs(values[rep] - mean) == min(abs(v - mean) for v in values)
        for epoch, value in trial.intermediate_values.items():  # reported: the seeds' mean
            assert value == pytest.approx(
                math.fsum(t.intermediate_values[epoch] for t in ones) / 3, abs=1e-12)

        run = client.get_run(attrs["mlflow_run_id"]).data
        assert run.metrics["val_accuracy"] == pytest.approx(mean, abs=1e-12)
        assert run.metrics["val_accuracy_std"] == pytest.approx(attrs["repeat_std"])
        assert {run.metrics[f"val_accuracy_seed{s}"] for s in SEEDS} == set(values)
        assert run.tags["representative_seed"] == str(rep)
        # Every seed's weights are kept; the trial's own are its representative seed's.
        run_id = attrs["mlflow_run_id"]
        for seed, one in zip(SEEDS, ones, strict=True):
            ours = tracker.load_top_weights(run_id, seed_weights_artifact(seed))
            theirs = alone_tracker.load_top_weights(one.user_attrs["mlflow_run_id"])
            assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
        own = tracker.load_top_weights(run_id)
        chosen = tracker.load_top_weights(run_id, seed_weights_artifact(rep))
        assert all(np.array_equal(a, b) for a, b in zip(own, chosen, strict=True))


def test_the_quickstart_repeats_spec_loads_with_three_repeats():
    spec = load_spec(STUDIES / "quickstart-repeats.yaml")
    assert spec.repeats == 3 and "seed" not in spec.param_names


# ----------------------------------------------------------------------------- spec errors


@pytest.mark.parametrize("changes, found", [
    ({"repeats": 0}, "0"),
    ({"repeats": "x"}, "'x'"),
    ({"repeats": 3, "space": {**SPACE, "seed": [0, 5]}}, "3"),
])
def test_bad_repeats_is_one_line_and_exit_2(project, capsys, changes, found):
    train = {k: v for k, v in SPEC["train"].items() if k != "seed"}
    spec_path = write_spec(project, name="bad", train=train, **changes)
    assert main(["run", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "bad.yaml" in err and "repeats: expected" in err and err.endswith(f"got {found}")
    assert not (project / "studies" / "optuna.db").exists() and not (project / "mlruns").exists()


# ----------------------------------------------------------------------------- leaderboard


def _made(value_lists: list[list[float]]) -> optuna.Study:
    study = optuna.create_study(study_name="made", direction="maximize")
    for number, values in enumerate(value_lists):
        spread = Spread(tuple(range(len(values))), tuple(values))
        study.add_trial(optuna.trial.create_trial(
            params={"learning_rate": 10.0 ** -(number + 1)},
            distributions={"learning_rate": optuna.distributions.FloatDistribution(1e-6, 1.0)},
            value=spread.mean, user_attrs=spread.attrs()))
    return study


def test_within_the_noise_is_at_most_one_standard_error_of_the_difference():
    best = Spread((0, 1, 2), (0.50, 0.52, 0.54))  # mean 0.52, std 0.02
    close = Spread((0, 1, 2), (0.49, 0.51, 0.53))  # 0.01 below; se sqrt(2 * 0.02**2 / 3)
    far = Spread((0, 1, 2), (0.40, 0.41, 0.42))
    assert math.sqrt(2 * 0.02 ** 2 / 3) == pytest.approx(0.01633, abs=1e-5)
    assert within_noise(best, close) and not within_noise(best, far)
    assert best.representative == 1 and best.text() == "0.5200 ± 0.0200"


def test_the_leaderboard_and_report_show_the_spread_and_mark_the_noise():
    study = _made([[0.49, 0.51, 0.53], [0.50, 0.52, 0.54], [0.40, 0.41, 0.42]])
    trials = study.get_trials()
    assert marks(trials, study.best_trial) == {0: "within noise", 1: "best", 2: ""}
    board = _shown(leaderboard_table(study, "val_accuracy"))
    rows = [line for line in board.splitlines() if line.startswith("│")]
    assert len(rows) == 3
    assert "0.5200 ± 0.0200" in rows[0] and "best" in rows[0]
    assert "0.5100 ± 0.0200" in rows[1] and "within noise" in rows[1]
    assert "0.4100 ± 0.0100" in rows[2] and "noise" not in rows[2]
    assert LEGEND in " ".join(board.split())
    assert "0.4100 ± 0.0100" in _shown(trials_table(study))  # `fer-search status`
    lines = report_lines(trials, True, "val_accuracy")
    assert "| 2 | 0 | 0.5100 ± 0.0200 | 0.4900 | 0.5300 | 3 | within noise |" in lines
    assert f"Legend: {LEGEND}." in lines


def test_a_one_seed_study_shows_no_spread():
    study = optuna.create_study(direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5))
    assert report_lines(study.get_trials(), True, "val_accuracy") == []
    board = _shown(leaderboard_table(study, "val_accuracy"))
    assert "±" not in board and "vs best" not in board and "0.5000" in board


def test_the_study_report_of_a_repeats_study_shows_the_spread(repeated):
    folder, where = repeated
    trials = _trials("rep", where)
    lines = report_lines(trials, True, "val_accuracy")
    assert lines and any("best" in line for line in lines)
    board = _shown(leaderboard_table(optuna.load_study(study_name="rep",
                                                       storage=where["storage_url"]),
                                     "val_accuracy"))
    assert board.count("±") >= 2 and "vs best" in board


# ----------------------------------------------------------------------------- promotion


def test_promote_registers_the_representative_seed_and_says_so(repeated):
    folder, where = repeated
    trials = _trials("rep", where)
    best = max(trials, key=lambda t: t.value)
    rep = best.user_attrs["repeat_representative"]
    result = promote("rep", **where)
    assert result.trial_number == best.number
    assert result.val_metrics["val_accuracy"] == pytest.approx(
        best.user_attrs["repeat_values"][SEEDS.index(rep)], abs=1e-6)
    client = MlflowClient(where["tracking_uri"])
    version = client.get_model_version(result.model_name, str(result.version))
    assert version.tags["representative_seed"] == str(rep) == version.tags["seed"]
    assert version.tags["repeat_seeds"] == "0,1,2"
    assert f"Registered seed: {rep}" in version.description
    assert "closest to the mean" in version.description
    run = client.get_run(best.user_attrs["mlflow_run_id"]).data.metrics
    assert run[f"test_accuracy_seed{rep}"] == pytest.approx(result.test_metrics["test_accuracy"])
    tests = [run[f"test_accuracy_seed{s}"] for s in SEEDS]
    assert run["test_accuracy_mean"] == pytest.approx(sum(tests) / 3)
    assert run["test_accuracy_std"] == pytest.approx(statistics.stdev(tests))
    assert float(version.tags["test_accuracy_mean"]) == pytest.approx(sum(tests) / 3)


# ----------------------------------------------------------------------------- one trial


class _PruneTrialOne(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return trial.number == 1 and max(trial.intermediate_values) >= 1


def test_a_repeats_trial_reports_the_seeds_mean_and_is_pruned_as_one(project, monkeypatch):
    spec_path = write_spec(project, name="prune", repeats=3,
                           space={**SPACE, "epochs": [3]})
    where = urls(project)
    monkeypatch.setattr(study_setup, "make_pruner", lambda spec: _PruneTrialOne())
    run_study(load_spec(spec_path), **where)
    trials = {t.number: t for t in _trials("prune", where)}
    assert trials[1].state == TrialState.PRUNED and list(trials[1].intermediate_values) == [1]
    assert "repeat_values" not in trials[1].user_attrs
    assert trials[0].state == TrialState.COMPLETE
    assert list(trials[0].intermediate_values) == [1, 2, 3]
    assert trials[0].intermediate_values[3] == pytest.approx(trials[0].value, abs=1e-12)
    run = MlflowClient(where["tracking_uri"]).get_run(trials[1].user_attrs["mlflow_run_id"])
    assert run.info.status == "KILLED"


def test_one_failing_seed_fails_its_trial_naming_the_seed_and_only_it(project, monkeypatch):
    real = head_engine.run_epoch

    def run_epoch(prog, specs, *args):
        if any(s.seed == 1 and s.learning_rate == 1.0e-2 for s in specs):
            raise MemoryError("simulated: no memory for this head")
        return real(prog, specs, *args)

    monkeypatch.setattr(head_engine, "run_epoch", run_epoch)
    spec_path = write_spec(project, name="failing", repeats=3, space=SPACE)
    where = urls(project)
    run_study(load_spec(spec_path), **where)
    trials = {t.params["learning_rate"]: t for t in _trials("failing", where)}
    failed, healthy = trials[1.0e-2], trials[3.0e-3]
    assert failed.state == TrialState.FAIL
    assert failed.user_attrs["reason"].startswith("seed 1 (one of 3 repeats): ")
    assert failed.user_attrs["failure"] == "permanent"
    assert healthy.state == TrialState.COMPLETE and len(healthy.user_attrs["repeat_values"]) == 3


def test_an_interrupted_repeats_trial_resumes_each_seed(project, monkeypatch):
    """Ctrl-C after seed 1's epoch 2: the next run's copy of the trial answers seed 0 from the
    record and resumes seed 1 from its checkpoint, and ends where an uninterrupted repeats
    trial ends (values, per-epoch means, the representative's weights)."""
    spec_path = write_spec(project, name="ctrl-c", repeats=3, space=RESUME_SPACE)
    where = urls(project)
    real = trainer.train_many

    def interrupted(configs, data, *, on_epoch=None, **options):
        def callback(index, epoch, metrics):
            on_epoch(index, epoch, metrics)
            if configs[index].seed == 1 and epoch == 2:
                raise KeyboardInterrupt
        return real(configs, data, on_epoch=callback, **options)

    monkeypatch.setattr(trainer, "train_many", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(load_spec(spec_path), **where)
    monkeypatch.setattr(trainer, "train_many", real)
    run_study(load_spec(spec_path), **where)

    trials = _trials("ctrl-c", where)
    (interrupted_trial,) = [t for t in trials if t.state == TrialState.FAIL]
    (resumed,) = [t for t in trials if t.state == TrialState.COMPLETE]
    reference_path = write_spec(project, name="ctrl-c-ref", repeats=3, space=RESUME_SPACE,
                                data={**SPEC["data"], "cache_dir": ".cache-ref"})
    reference_where = {"storage_url": f"sqlite:///{project}/studies/ref.db",
                       "tracking_uri": f"sqlite:///{project}/mlruns/ref.db"}
    run_study(load_spec(reference_path), **reference_where)
    (reference,) = _trials("ctrl-c-ref", reference_where)
    assert resumed.user_attrs["repeat_values"] == reference.user_attrs["repeat_values"]
    assert_resumed_like_uninterrupted(resumed, reference, where["tracking_uri"],
                                      reference_where["tracking_uri"],
                                      interrupted_trial.user_attrs["mlflow_run_id"])


def test_a_batch_counts_each_trials_seeds_and_never_splits_a_trial(tmp_path, monkeypatch):
    """`Batching.fits`, the claim's rule: trials of one key fit while their heads, seeds
    counted, stay within FER_SEARCH_MAX_GROUP (4 here): two one-seed trials fit, two trials of
    three seeds (6 heads) do not, and one trial of three does."""
    from search import settings
    from search.study.batches import Batching

    one = load_spec(write_spec(tmp_path, name="one", space=SPACE))
    three = load_spec(write_spec(tmp_path, name="three", repeats=3, space=SPACE))
    a = {"learning_rate": 3.0e-3, "batch_size": 32, "epochs": 2, "head_width": 16}
    b = {**a, "learning_rate": 1.0e-2}
    with settings.override(FER_SEARCH_MAX_GROUP=4):
        assert Batching(one).key(a) == Batching(one).key(b) is not None
        assert Batching(one).fits([a, b])
        assert not Batching(three).fits([a, b])
        assert Batching(three).fits([a])
