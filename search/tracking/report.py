"""A study a person can read: the story on the study's MLflow run, and Optuna's plots beside it.

    Optuna study + MLflow runs + registry -> description (Markdown), tags, plots -> the study run

`refresh` gathers what the report shows (the best trial, importances, registered versions) and
writes, on the study's parent run:

- its description (`mlflow.note.content`, Markdown; `report_description`): the best trial, its
  value and params, a link to its run, the versions registered from the study and their aliases,
  the trial counts;
- tags `best_trial_number`, `best_run_id`;
- Optuna's plots under `plots/` (`report_plots`): one PNG each and one interactive HTML page
  holding them all (`report_page`).

`run_study` calls `refresh_after_run` when it ends; `fer-search report STUDY` calls `refresh` on
any study, in progress or not. The same summary, with the study's spec, is the study's note in
optuna-dashboard (`dashboard_note`).

Every `run` ends with a report, so what it imports is paid by every study: importances are
PED-ANOVA's without scikit-learn (`importances`), matplotlib and plotly are imported only when
plots are drawn (`report_plots`), optuna-dashboard only when its note is written.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import optuna
from optuna.trial import TrialState

from search.contracts import (
    METRIC_ATTR,
    MODEL_NAME_ATTR,
    PARENT_RUN_ATTR,
    SPEC_ATTR,
    TRIAL_RUN_ID_ATTR,
    own_best,
)
from search.storage.sessions import load_study_named, open_storage
from search.tracking import pareto
from search.tracking.importances import importances as param_importances
from search.tracking.report_description import describe
from search.tracking.report_plots import PLOTS_DIR, draw_plots
from search.tracking.runs import NOTE_TAG, Tracker

DESCRIPTION_FILE = "description.md"


@dataclass
class StudyReport:
    """What `refresh` wrote.

    Attributes:
        description: the study run's Markdown description.
        tags: the study run's tags set (best trial and run).
        plots: the plot files written (PNGs and the HTML page), by name.
        skipped: plots not drawn, with the reason (too few trials or params).
        run_id: the study's MLflow run ('' when it has none).
    """

    description: str
    tags: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    run_id: str = ""


# ------------------------------------------------------------------------------------- entries


def refresh_study(study_name: str, storage_url: str, tracking_uri: str,
                  out_dir: Path | None = None) -> StudyReport:
    """`fer-search report`: refreshes the study run of `study_name` (and writes the files into
    `out_dir` too, when given). Works on a study in progress.

    Raises:
        InputError: no such study.
    """
    storage = open_storage(storage_url)
    try:
        study = load_study_named(study_name, storage)
        tracker = Tracker(tracking_uri)
        return refresh(study, tracker, out_dir=out_dir)
    finally:
        storage.engine.dispose()  # a one-shot command: no pooled connection left behind


def refresh_after_run(study: optuna.Study, tracker: Tracker, sink: TextIO | None = None) -> None:
    """The end of a `run` or a worker: refreshes the report unless other workers still run
    trials (the last one to finish refreshes it). A report that cannot be made is a warning,
    never a failed study."""
    sink = sink or sys.stderr
    try:
        if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            return
        refresh(study, tracker)
    except Exception as error:  # the study's results are safe; only its summary is missing
        print(f"warning: the study report was not refreshed ({type(error).__name__}: "
              f"{' '.join(str(error).split())[:300]}); `fer-search report {study.study_name}` "
              f"retries", file=sink)


def refresh(study: optuna.Study, tracker: Tracker, out_dir: Path | None = None) -> StudyReport:
    """Writes the description, tags and plots of `study` on its MLflow run (and into
    `out_dir`); returns what it wrote."""
    trials = study.get_trials(deepcopy=False)
    metric = study.user_attrs.get(METRIC_ATTR, "value")
    best = own_best(study)  # never a trial a warm start added from an earlier study
    run_id = study.user_attrs.get(PARENT_RUN_ATTR, "")
    experiment = tracker.client.get_experiment_by_name(study.study_name)
    best_run_id = best.user_attrs.get(TRIAL_RUN_ID_ATTR, "") if best else ""
    importances = param_importances(study)
    versions = registered_versions(tracker, study)

    report = StudyReport(description="", run_id=run_id)
    if best is not None:
        report.tags = {"best_trial_number": str(best.number), "best_run_id": best_run_id}
    with tempfile.TemporaryDirectory(prefix="fer-report-") as tmp:
        folder = Path(out_dir) if out_dir is not None else Path(tmp)
        plots_dir = folder / PLOTS_DIR
        plots_dir.mkdir(parents=True, exist_ok=True)
        report.skipped = draw_plots(study, metric, importances, plots_dir)
        report.skipped.update(pareto.draw_front(study, plots_dir))  # several objectives
        report.plots = sorted(p.name for p in plots_dir.iterdir())
        report.description = describe(
            study, trials, metric, best, best_run_id,
            experiment.experiment_id if experiment else None, importances, versions,
            report.plots, report.skipped,
        )
        (folder / DESCRIPTION_FILE).write_text(report.description)
        if run_id:
            tracker.log(run_id, tags={NOTE_TAG: report.description, **report.tags})
            tracker.client.log_artifacts(run_id, str(plots_dir), PLOTS_DIR)
    # The MLflow run link means nothing in optuna-dashboard: keep its text only.
    dashboard_note(study, re.sub(r"\[(trial-\d+)\]\(#[^)]*\)", r"\1", report.description))
    return report


# ----------------------------------------------------------------------- gathering, publishing


def registered_versions(tracker: Tracker, study: optuna.Study) -> list[dict[str, str]]:
    """The model versions registered from `study` (newest first) and their aliases; empty when
    the registry has none (or cannot be read)."""
    name = study.user_attrs.get(MODEL_NAME_ATTR)
    if not name:
        return []
    try:
        model = tracker.client.get_registered_model(name)
        found = tracker.client.search_model_versions(f"name = '{name}'")
    except Exception:  # no registered model by that name (yet)
        return []
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in sorted(found, key=lambda v: -int(v.version)):
        if v.tags.get("study") != study.study_name:
            continue
        score = next(((k, v.tags[k]) for k in ("test_accuracy", "test_macro_f1") if k in v.tags),
                     None)
        rows.append({
            "name": name,
            "version": str(v.version),
            "aliases": ", ".join(sorted(aliases.get(str(v.version), []))),
            "trial": v.tags.get("trial_number", "?"),
            "score": f", {score[0]} {float(score[1]):.4f}" if score else "",
        })
    return rows


def dashboard_note(study: optuna.Study, summary: str = "") -> None:
    """The study's note in optuna-dashboard: the summary, then the spec as a YAML block (the
    `spec_yaml` attribute shows as one line in the dashboard's attribute table)."""
    try:  # optional, and ~2.4 s measured: imported only when a report is written
        from optuna_dashboard import save_note
    except ImportError:  # the dashboard is not installed: nobody reads the note
        return
    spec = study.user_attrs.get(SPEC_ATTR, "")
    body = summary.strip()
    if spec:
        body += f"\n\n### Spec\n\n```yaml\n{spec.rstrip()}\n```\n"
    save_note(study, body.strip() + "\n")
