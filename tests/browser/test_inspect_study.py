"""A tiny study, promoted, seen as a person sees it: the MLflow UI at the URL `fer-search ui`
prints, and optuna-dashboard. Every assertion reads the rendered page.

One study per module (about a minute on 2 cores, most of it the two servers starting).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from search.tracking.runs import ML_VIEW
from tests.infra.pgcluster import free_port
from tests.infra.waiting import http_ok, wait_for
from tests.search.studyhelp import urls, write_spec

pytestmark = pytest.mark.browser

STUDY = "tiny"
MODEL = "expw-test"  # studyhelp's spec
SPACE = {"learning_rate": [1.0e-3, 1.0e-2], "batch_size": [32], "epochs": [1, 2],
         "head_width": [16, 32]}
URL = re.compile(r"http://\S+workflowType=machine_learning")


@dataclass(frozen=True)
class Inspected:
    """The promoted study and the two servers showing it."""

    runs_url: str
    dashboard_url: str
    base: str
    experiment_id: str
    study_run_id: str
    best_trial: int
    trial_count: int
    logged_model_id: str


@pytest.fixture(scope="module")
def inspected(tmp_path_factory, browser):
    from mlflow import MlflowClient

    from search.cli.main import main
    from search.spec.loader import load_spec
    from search.study.loop import run_study
    from trainer.runtime import load_tensorflow

    folder = tmp_path_factory.mktemp("project")
    where = urls(folder)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        load_tensorflow()
        spec = load_spec(write_spec(folder, STUDY, space=SPACE))
        summary = run_study(spec, **where)
        assert main(["promote", STUDY, "--storage", where["storage_url"],
                     "--tracking-uri", where["tracking_uri"]]) == 0
        ui_port, dashboard_port = free_port(), free_port()
        env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
        ui = _start(folder, env, "ui", ["ui", "--tracking-uri", where["tracking_uri"],
                                        "--port", str(ui_port), "--study", STUDY])
        dashboard = _start(folder, env, "dashboard", ["dashboard", "--storage",
                                                      where["storage_url"], "--port",
                                                      str(dashboard_port)])
        try:
            runs_url = wait_for(lambda: _printed_url(ui), 120, "the URL `fer-search ui` prints",
                                interval=0.5, watch=[ui])
            base = f"http://127.0.0.1:{ui_port}"
            wait_for(lambda: http_ok(f"{base}/health"), 240, "the MLflow UI", interval=0.5,
                     watch=[ui])
            dashboard_url = f"http://127.0.0.1:{dashboard_port}/dashboard/"
            wait_for(lambda: http_ok(dashboard_url), 120, "optuna-dashboard", interval=0.5,
                     watch=[dashboard])
            client = MlflowClient(where["tracking_uri"])
            experiment = client.get_experiment_by_name(STUDY)
            version = client.get_model_version_by_alias(MODEL, "champion")
            logged = [m for m in client.search_logged_models([experiment.experiment_id])
                      if m.source_run_id == version.run_id]
            yield Inspected(runs_url, dashboard_url, base, experiment.experiment_id,
                            summary.parent_run_id, summary.best.number, len(summary.outcomes),
                            logged[-1].model_id)
        finally:
            for server in (ui, dashboard):
                server.stop()


def test_ui_prints_the_runs_url_of_the_study_in_the_model_training_view(inspected):
    assert inspected.runs_url == (f"{inspected.base}/#/experiments/{inspected.experiment_id}"
                                  f"/runs?workflowType=machine_learning")


def test_runs_view_lists_the_trial_runs_under_the_study_run(inspected, page, screenshots):
    page.goto(inspected.runs_url)
    study_row = page.get_by_role("link", name=STUDY, exact=True).last
    study_row.wait_for()
    _close_assistant(page)
    assert page.get_by_text("Model training").first.is_visible()
    # The trials are nested under the study run, collapsed until its row is expanded.
    page.locator('[data-component-id$="runnamecellrenderer.tsx_46"]').first.click()
    for number in range(inspected.trial_count):
        page.get_by_role("link", name=f"trial-{number}", exact=True).wait_for()
    # The dataset input shows in the "Dataset" column, on the study run and every trial.
    assert page.get_by_text(re.compile(r"expw-32px \(")).count() >= inspected.trial_count + 1
    page.screenshot(path=screenshots / "runs.png")


def test_study_run_description_names_the_best_trial(inspected, page, screenshots):
    page.goto(f"{inspected.base}/#/experiments/{inspected.experiment_id}/runs/"
              f"{inspected.study_run_id}?{ML_VIEW}")
    heading = page.get_by_text(f"Best: trial {inspected.best_trial},")
    heading.wait_for()
    _close_assistant(page)
    # The link to the best trial's run, the registered version and the trial counts.
    assert page.get_by_role("link", name=f"trial-{inspected.best_trial}", exact=True).count()
    assert page.get_by_text(re.compile(rf"{MODEL}\s+version 1")).count()
    assert page.get_by_text(f"{inspected.trial_count} complete, 0 pruned, 0 failed").count()
    more = page.get_by_text("Show more")  # the description is folded after a few lines
    if more.count():
        more.first.click()
    page.screenshot(path=screenshots / "study-run.png", full_page=True)


def test_study_run_artifacts_include_the_plots(inspected, page, screenshots):
    page.goto(f"{inspected.base}/#/experiments/{inspected.experiment_id}/runs/"
              f"{inspected.study_run_id}/artifacts/plots/optimization_history.png?{ML_VIEW}")
    for name in ("optimization_history.png", "param_importances.png", "parallel_coordinate.png",
                 "slice.png", "contour.png", "intermediate_values.png", "report.html"):
        page.get_by_text(name, exact=True).first.wait_for()
    _close_assistant(page)
    image = page.locator("img[alt='plots/optimization_history.png']").first
    image.wait_for()
    assert image.evaluate("img => img.complete && img.naturalWidth") > 0
    page.screenshot(path=screenshots / "study-plots.png")


def test_model_registry_shows_the_champion(inspected, page, screenshots):
    page.goto(f"{inspected.base}/#/models/{MODEL}?{ML_VIEW}")
    page.get_by_text("champion").first.wait_for()
    _close_assistant(page)
    page.screenshot(path=screenshots / "registry.png")


def test_logged_model_page_shows_its_model_version(inspected, page, screenshots):
    page.goto(f"{inspected.base}/#/experiments/{inspected.experiment_id}/models/"
              f"{inspected.logged_model_id}?{ML_VIEW}")
    page.get_by_text("test_accuracy").first.wait_for()  # its metrics: the page is there
    _close_assistant(page)
    page.screenshot(path=screenshots / "logged-model.png")
    # Registered: no "Not registered" tag, and its version listed under "Model versions".
    assert page.get_by_text("Not registered").count() == 0
    assert page.locator(f'a[href*="/models/{MODEL}/versions/1"]').count()
    # "Datasets used" names the data its test metrics were measured on (it read "None" before),
    # and the description says what the model is and how to load it ("No description" before).
    assert page.get_by_text("Datasets used").count()
    assert page.get_by_text(re.compile(r"expw-32px")).count()
    assert page.get_by_text("No description").count() == 0
    assert page.get_by_text(re.compile(r"Facial-expression classifier")).count()


def test_optuna_dashboard_shows_the_study_and_its_spec(inspected, page, screenshots):
    page.goto(inspected.dashboard_url)
    page.get_by_text(re.compile(rf"^\d+\. {STUDY}$")).first.click()  # the study list: "1. tiny"
    page.get_by_text(f"Best Trial (number={inspected.best_trial})").first.wait_for()
    page.screenshot(path=screenshots / "dashboard.png")
    # The study's note: the report, and the spec as YAML, one key a line.
    page.get_by_role("link", name="Note").or_(page.get_by_text("Note", exact=True)).first.click()
    page.get_by_text(f"Best: trial {inspected.best_trial},").first.wait_for()
    page.wait_for_url(re.compile(r"/note$"))
    assert "\nsampler: grid\nseed: 0\n" in page.inner_text("body")
    page.screenshot(path=screenshots / "dashboard-note.png", full_page=True)


# ------------------------------------------------------------------------------------ helpers


@dataclass
class _Server:
    process: subprocess.Popen
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        """Stops the server's whole process group (`mlflow ui` runs uvicorn as a child) as a
        Ctrl-C would: `mlflow ui` outlives a SIGTERM to it, waiting on its child."""
        for sig, wait in ((signal.SIGINT, 20), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _start(folder: Path, env: dict[str, str], name: str, args: list[str]) -> _Server:
    log = folder / f"{name}.log"
    with open(log, "wb") as sink:
        process = subprocess.Popen([sys.executable, "-m", "search.cli", *args], cwd=folder,
                                   env=env, stdout=sink, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True)
    return _Server(process, log)


def _printed_url(server: _Server) -> str | None:
    found = URL.search(server.output())
    return found.group(0) if found else None


def _close_assistant(page) -> None:
    """MLflow 3.17 opens its assistant panel on a first visit; it would hide half the page."""
    close = page.locator('[data-component-id="mlflow.assistant.chat_panel.close"]')
    if close.count():
        close.first.click()
