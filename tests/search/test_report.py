"""The study a person reads: the study run's description, tags and plots (search.tracking.report,
report_description, report_plots, report_page, importances), the trial runs' bookkeeping tags,
description and dataset input, the dashboard note, and the `ui` and `report` commands, on one
small real study."""

from __future__ import annotations

import json

import optuna
import pytest

from search.cli.main import main
from search.tracking.runs import BOOKKEEPING, NOTE_TAG
from tests.search.studyhelp import urls, write_spec

STUDY = "story"
# Two params that vary (a contour), and an epochs axis: the 1-epoch trials are answered from the
# 2-epoch trainings' records.
SPACE = {"learning_rate": [1.0e-3, 1.0e-2], "batch_size": [32], "epochs": [1, 2],
         "head_width": [16]}
PLOT_FILES = {"optimization_history.png", "param_importances.png", "parallel_coordinate.png",
              "slice.png", "contour.png", "intermediate_values.png", "report.html"}


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    """The study half run (2 of its 4 grid points), then run to the end: (where, client,
    study, the report seen in between)."""
    from mlflow import MlflowClient

    from search.spec.loader import load_spec
    from search.study.loop import run_study
    from search.tracking.report import refresh_study
    from trainer.runtime import load_tensorflow

    folder = tmp_path_factory.mktemp("story")
    where = urls(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        load_tensorflow()
        spec = load_spec(write_spec(folder, STUDY, space=SPACE))
        run_study(spec, n_trials=2, **where)
        in_progress = refresh_study(STUDY, where["storage_url"], where["tracking_uri"])
        run_study(spec, **where)
        study = optuna.load_study(study_name=STUDY, storage=where["storage_url"])
        yield where, MlflowClient(where["tracking_uri"]), study, in_progress, folder


def test_study_run_tells_the_best_trial_and_holds_the_plots(story):
    where, client, study, _, _ = story
    best = study.best_trial
    run = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert run.data.tags["best_trial_number"] == str(best.number)
    assert run.data.tags["best_run_id"] == best.user_attrs["mlflow_run_id"]
    note = run.data.tags[NOTE_TAG]
    assert f"### Best: trial {best.number}, val_accuracy = {best.value:.4f}" in note
    assert f"/runs/{best.user_attrs['mlflow_run_id']}?workflowType=machine_learning)" in note
    assert "Trials: 4 complete, 0 pruned, 0 failed." in note
    assert f"| learning_rate | {best.params['learning_rate']:.6g} |" in note
    assert "Not promoted yet" in note
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == PLOT_FILES
    page = client.download_artifacts(run.info.run_id, "plots/report.html")
    text = open(page).read()
    assert text.count("<h2>") == 6 and "plotly" in text


def test_report_of_a_study_in_progress_counts_the_waiting_points(story):
    _, _, _, in_progress, _ = story
    assert "Trials: 2 complete, 0 pruned, 0 failed, 2 grid points queued." in \
        in_progress.description
    assert "Best: trial" in in_progress.description
    assert in_progress.run_id


def test_trial_runs_keep_bookkeeping_in_tags_and_describe_themselves(story):
    _, client, study, _, _ = story
    answered = 0
    for trial in study.trials:
        run = client.get_run(trial.user_attrs["mlflow_run_id"])
        tags, metrics = run.data.tags, run.data.metrics
        assert not set(BOOKKEEPING) & set(metrics)  # the charts show learning curves only
        assert set(BOOKKEEPING) <= set(tags)
        from_record = tags["epochs_trained"] == "0"
        assert tags["answered_from_record"] == str(from_record).lower()
        answered += from_record
        note = tags[NOTE_TAG]
        assert "\n" not in note and note.startswith(f"val_accuracy {trial.value:.4f}")
        assert ("answered from its group's training record" in note) == from_record
    assert answered == 2  # the two 1-epoch trials


def test_the_dataset_is_an_mlflow_input_of_every_run(story):
    _, client, study, _, _ = story
    runs = [study.user_attrs["mlflow_parent_run_id"]]
    runs += [t.user_attrs["mlflow_run_id"] for t in study.trials]
    params = client.get_run(runs[0]).data.params
    for run_id in runs:
        inputs = client.get_run(run_id).inputs.dataset_inputs
        assert len(inputs) == 1
        dataset = inputs[0].dataset
        assert dataset.name == "expw-32px"
        assert dataset.digest == params["data_fingerprint"][:32]
        profile = json.loads(dataset.profile)
        assert profile["fingerprint"] == params["data_fingerprint"]
        assert profile["split_sizes"] == {k: int(params[f"split_{k}"])
                                          for k in ("train", "val", "test")}
        assert json.loads(dataset.source)["uri"].startswith("file://")


def test_dashboard_note_holds_the_report_and_the_spec_one_key_a_line(story):
    from optuna_dashboard._note import get_note_from_system_attrs

    where, _, study, _, _ = story
    fresh = optuna.load_study(study_name=STUDY, storage=where["storage_url"])
    storage = fresh._storage
    attrs = storage.get_study_system_attrs(fresh._study_id)
    body = get_note_from_system_attrs(attrs, None)["body"]
    assert f"Best: trial {study.best_trial.number}" in body
    assert "```yaml\nsampler: grid\n" in body


def test_report_command_writes_the_files_and_prints_the_story(story, capsys):
    where, _, study, _, folder = story
    out = folder / "report-out"
    code = main(["report", STUDY, "--storage", where["storage_url"], "--tracking-uri",
                 where["tracking_uri"], "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Best: trial {study.best_trial.number}" in printed
    assert (out / "description.md").read_text().startswith(f"**Study `{STUDY}`**")
    assert {p.name for p in (out / "plots").iterdir()} == PLOT_FILES


def test_report_and_ui_name_an_unknown_study_with_exit_code_2(story, capsys):
    where, _, _, _, _ = story
    assert main(["report", "nope", "--storage", where["storage_url"], "--tracking-uri",
                 where["tracking_uri"]]) == 2
    assert main(["ui", "--study", "nope", "--tracking-uri", where["tracking_uri"]]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("'nope'" in line and STUDY in line for line in lines)


def test_ui_picks_the_most_recent_study_and_links_its_runs_in_the_training_view(story):
    from search.tracking.runs import pick_experiment, runs_url

    _, client, _, _, _ = story
    experiment = pick_experiment(client, None)
    assert experiment.name == STUDY
    assert runs_url("http://127.0.0.1:5000", experiment.experiment_id) == (
        f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs"
        "?workflowType=machine_learning")


@pytest.mark.postgres
def test_report_on_postgres_with_a_tracking_server(pg_cluster, mlflow_server, tmp_path,
                                                   monkeypatch, capsys):
    from mlflow import MlflowClient

    from search.spec.loader import load_spec
    from search.study.loop import run_study
    from trainer.runtime import load_tensorflow

    monkeypatch.chdir(tmp_path)
    load_tensorflow()
    where = {"storage_url": pg_cluster.url(), "tracking_uri": mlflow_server.uri}
    space = {**SPACE, "epochs": [1], "head_width": [16, 32]}
    run_study(load_spec(write_spec(tmp_path, "pg-report", space=space)), **where)
    assert main(["report", "pg-report", "--storage", where["storage_url"], "--tracking-uri",
                 where["tracking_uri"]]) == 0
    assert "Trials: 4 complete, 0 pruned, 0 failed." in capsys.readouterr().out
    study = optuna.load_study(study_name="pg-report", storage=where["storage_url"])
    client = MlflowClient(where["tracking_uri"])
    run = client.get_run(study.user_attrs["mlflow_parent_run_id"])
    assert run.data.tags["best_trial_number"] == str(study.best_trial.number)
    plots = {a.path.split("/")[-1] for a in client.list_artifacts(run.info.run_id, "plots")}
    assert plots == PLOT_FILES
    # PostgreSQL holds MLflow's dataset digests to 36 characters: the fingerprint is cut to 32.
    assert len(run.inputs.dataset_inputs[0].dataset.digest) == 32


IMPORTANCES_WITHOUT_SKLEARN = """
import sys
import optuna
from search.tracking.importances import importance_module

optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.create_study()
study.optimize(lambda t: t.suggest_float("x", 0, 1) + 0.1 * t.suggest_float("y", 0, 1), 12)
importance = importance_module()
found = importance.get_param_importances(study, evaluator=importance.PedAnovaImportanceEvaluator())
assert set(found) == {"x", "y"}, found
assert "sklearn" not in sys.modules
# Optuna's evaluators that need scikit-learn import it when used
for evaluator in (importance.FanovaImportanceEvaluator(seed=0),
                  importance.MeanDecreaseImpurityImportanceEvaluator(seed=0)):
    assert set(importance.get_param_importances(study, evaluator=evaluator)) == {"x", "y"}
assert "sklearn.ensemble" in sys.modules
print("ok")
"""


def test_importances_are_computed_without_importing_sklearn_and_fanova_still_works() -> None:
    """The report's importances (PED-ANOVA) import no scikit-learn (~1.2 s of every `run`), and
    the evaluators that need it still work in that process. In a fresh process: this one may
    have imported scikit-learn already."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", IMPORTANCES_WITHOUT_SKLEARN], cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")
