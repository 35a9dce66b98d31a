"""A study a person can read: the story on the study's MLflow run, and Optuna's plots beside it.

    Optuna study + MLflow runs + registry -> description (Markdown), tags, plots -> the study run

`refresh` writes, on the study's parent run:

- its description (`mlflow.note.content`, Markdown): the best trial, its value and params, a link
  to its run, the versions registered from the study and their aliases, the trial counts;
- tags `best_trial_number`, `best_run_id`;
- Optuna's plots under `plots/`: one PNG each (matplotlib) and one interactive HTML page holding
  them all (plotly; one page, so plotly.js is embedded once rather than six times).

`run_study` calls `refresh_after_run` when it ends; `fer-search report STUDY` calls `refresh` on
any study, in progress or not. The same summary, with the study's spec, is the study's note in
optuna-dashboard (`dashboard_note`).

PNGs come from optuna.visualization.matplotlib rather than plotly + kaleido: kaleido 1.x drives a
Chrome it must find or download, which a worker machine need not have.

Every `run` ends with a report, so what it imports is paid by every study. Importances are
PED-ANOVA's, which needs no scikit-learn; Optuna's `importance` package still imports
scikit-learn (and SciPy, ~1.2-1.5 s) for its other evaluators, so `importance_module` imports it
with scikit-learn held back, and those evaluators import it when first used. Matplotlib and
plotly are imported only when plots are drawn; PNGs are written with fast zlib compression.
"""

from __future__ import annotations

import html
import importlib.util
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import TextIO

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import (
    METRIC_ATTR,
    MODEL_NAME_ATTR,
    PARENT_RUN_ATTR,
    SAMPLER_ATTR,
    SPEC_ATTR,
    TRIAL_REASON_ATTR,
    TRIAL_RUN_ID_ATTR,
    failed_for_good,
    own_best,
)
from search.storage import optuna_private as private
from search.storage.sessions import load_study_named, open_storage
from search.tracking import pareto
from search.tracking.runs import ML_VIEW, NOTE_TAG, Tracker, experiment_runs_path
from search.tracking.spread import report_lines

# Imported where first used: optuna_dashboard (~2.5 s, and optional: no note without it),
# matplotlib and optuna.visualization (~1.8 s): `run` and `worker` import this module (through
# search.study.loop) and draw only when the study's report is refreshed. optuna.importance is
# imported without scikit-learn on purpose (`importance_module`), scikit-learn at first use.

PLOTS_DIR = "plots"
HTML_PAGE = "report.html"
DESCRIPTION_FILE = "description.md"
# (file stem, title, optuna.visualization function name)
PLOTS = (
    ("optimization_history", "Optimization history", "plot_optimization_history"),
    ("param_importances", "Parameter importances", "plot_param_importances"),
    ("parallel_coordinate", "Parallel coordinate", "plot_parallel_coordinate"),
    ("slice", "Slice", "plot_slice"),
    ("contour", "Contour of the two most important params", "plot_contour"),
    ("intermediate_values", "Intermediate values (per epoch)", "plot_intermediate_values"),
)
# zlib level 1: a PNG encodes in ~60% of level 6's time (41 -> 24 ms for the largest plot here),
# files 1.1-1.25x as big.
PNG_OPTIONS = {"compress_level": 1}


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
    best = _best(study)
    run_id = study.user_attrs.get(PARENT_RUN_ATTR, "")
    experiment = tracker.client.get_experiment_by_name(study.study_name)
    best_run_id = best.user_attrs.get(TRIAL_RUN_ID_ATTR, "") if best else ""
    importances = _importances(study)
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


# ------------------------------------------------------------------------------- description


def describe(
    study: optuna.Study,
    trials: list[FrozenTrial],
    metric: str,
    best: FrozenTrial | None,
    best_run_id: str,
    experiment_id: str | None,
    importances: dict[str, float],
    versions: list[dict[str, str]],
    plots: list[str],
    skipped: dict[str, str],
) -> str:
    """The study run's description, in Markdown."""
    counts = {state: sum(1 for t in trials if t.state == state) for state in TrialState}
    sampler = study.user_attrs.get(SAMPLER_ATTR, "?")
    goal = pareto.goal_text(study, metric)  # its direction and metric, or each objective's
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"**Study `{study.study_name}`**: {sampler} search, {goal} "
        f"(report of {when}).",
        "",
        "Trials: " + ", ".join(
            f"{counts[state]} {label}" for state, label in (
                (TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"),
                (TrialState.FAIL, "failed"), (TrialState.RUNNING, "running"),
                (TrialState.WAITING, "waiting"))
            if counts[state] or state in (TrialState.COMPLETE, TrialState.PRUNED,
                                          TrialState.FAIL)
        ) + ".",
        "",
    ]
    lines += _failures(trials)
    if best is None:
        lines += [pareto.no_best_text(study), ""]
    else:
        link = best_run_id
        if experiment_id is not None and best_run_id:
            path = f"{experiment_runs_path(experiment_id)}/{best_run_id}?{ML_VIEW}"
            link = f"[trial-{best.number}](#{path})"
        lines += [
            f"### Best: trial {best.number}, {pareto.values_text(study, best, metric)}",
            "",
            f"Run: {link}",
            "",
            "| param | value |",
            "|---|---|",
            *(f"| {name} | {_value_text(value)} |" for name, value in best.params.items()),
            "",
        ]
        # With repeats: the best configurations' mean ± std, those within the noise marked.
        if not pareto.is_multi(study):  # several objectives: the Pareto front instead
            lines += report_lines(trials, study.direction.name == "MAXIMIZE", metric)
    lines += pareto.constraint_lines(study) + pareto.front_lines(study)
    if versions:
        lines += ["### Registered", ""]
        for v in versions:
            aliases = f" (**{v['aliases']}**)" if v["aliases"] else ""
            lines.append(f"- `{v['name']}` version {v['version']}{aliases}: trial "
                         f"{v['trial']}{v['score']}")
        lines.append("")
    elif best is not None:
        lines += [f"Not promoted yet: `fer-search promote {study.study_name}` registers the best "
                  "trial.", ""]
    if importances:
        lines += ["Parameter importance: " + ", ".join(
            f"{name} {value:.2f}" for name, value in importances.items()), ""]
    if plots:
        lines.append(f"Plots: artifacts `{PLOTS_DIR}/` (PNG), all of them interactive in "
                     f"`{PLOTS_DIR}/{HTML_PAGE}`.")
    if skipped:
        lines.append("Not drawn: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".")
    return "\n".join(lines).strip() + "\n"


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
    try:
        from optuna_dashboard import save_note
    except ImportError:  # the dashboard is not installed: nobody reads the note
        return
    spec = study.user_attrs.get(SPEC_ATTR, "")
    body = summary.strip()
    if spec:
        body += f"\n\n### Spec\n\n```yaml\n{spec.rstrip()}\n```\n"
    save_note(study, body.strip() + "\n")


# ------------------------------------------------------------------------------------- plots


def draw_plots(study: optuna.Study, metric: str, importances: dict[str, float],
               folder: Path) -> dict[str, str]:
    """Each plot as `folder/<name>.png`, and all of them in `folder/report.html`; returns the
    plots not drawn and why."""
    import matplotlib

    matplotlib.use("Agg")  # no display; must precede pyplot
    import matplotlib.pyplot as plt

    importance_module()  # before optuna.visualization, which imports it
    import optuna.visualization as plotly_plots
    import optuna.visualization.matplotlib as mpl_plots

    skipped = _skip_reasons(study, importances)
    figures = []
    for stem, title, function in PLOTS:
        if stem in skipped:
            continue
        kwargs = _plot_kwargs(stem, metric, importances)
        kwargs.update(pareto.target_kwargs(study, stem))  # several objectives: the metric's
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ExperimentalWarning, "too few trials" notes
                figures.append((title, getattr(plotly_plots, function)(study, **kwargs)))
                axes = getattr(mpl_plots, function)(study, **kwargs)
        except Exception as error:  # a plot Optuna cannot draw for this study
            skipped[stem] = f"{type(error).__name__}: {error}"[:200]
            continue
        figure = _figure_of(axes)
        figure.set_size_inches(9, 5.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Axes not compatible with tight_layout" (slice)
            figure.tight_layout()
        figure.savefig(folder / f"{stem}.png", dpi=100, pil_kwargs=PNG_OPTIONS)
        plt.close(figure)
    if figures:
        (folder / HTML_PAGE).write_text(_html_page(study.study_name, figures))
    return skipped


def _skip_reasons(study: optuna.Study, importances: dict[str, float]) -> dict[str, str]:
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    reasons: dict[str, str] = {}
    if not complete:
        return {stem: "no complete trial yet" for stem, _, _ in PLOTS}
    if len(importances) < 1:
        reasons["param_importances"] = "needs 2 complete trials that differ in a param"
    if len(importances) < 2:
        reasons["contour"] = "needs two params that vary"
    if len(complete) < 2 or not complete[0].params:
        reasons["parallel_coordinate"] = "needs 2 complete trials with params"
    if not any(t.intermediate_values for t in study.get_trials(deepcopy=False)):
        reasons["intermediate_values"] = "no trial reported per-epoch values"
    return reasons


def _plot_kwargs(stem: str, metric: str, importances: dict[str, float]) -> dict:
    if stem == "contour":
        return {"params": list(importances)[:2], "target_name": metric}
    if stem == "intermediate_values":
        return {}
    if stem == "param_importances":
        return {"target_name": metric, "params": list(importances), "evaluator": _evaluator()}
    return {"target_name": metric}


def _figure_of(axes):
    """The Figure of what optuna's matplotlib functions return: Axes, or an array of them."""
    first = np.asarray(axes, dtype=object).ravel()[0]
    return first.get_figure()


def _html_page(study_name: str, figures: list[tuple[str, object]]) -> str:
    parts = []
    for index, (title, figure) in enumerate(figures):
        body = figure.to_html(full_html=False, include_plotlyjs=index == 0)
        parts.append(f"<h2>{html.escape(title)}</h2>\n{body}")
    return (
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
        f"<title>{html.escape(study_name)}: plots</title></head>\n<body style=\"font-family: "
        f"sans-serif\">\n<h1>Study {html.escape(study_name)}</h1>\n" + "\n".join(parts)
        + "\n</body></html>\n"
    )


# ------------------------------------------------------------------------------------ helpers


def importance_module() -> ModuleType:
    """`optuna.importance`, imported without scikit-learn when nothing has imported it yet.

    The package imports its fANOVA and mean-decrease-impurity evaluators, which import
    scikit-learn inside Optuna's `try_import` (an ImportError is kept for later). While the
    package is imported, `sys.modules["sklearn"]` is None, so that import fails at once; then
    each such module gets `_SklearnOnFirstUse`, which imports scikit-learn when the evaluator is
    built (what `try_import`'s `check()` guards), so both still work in this process.
    """
    if "optuna.importance" in sys.modules or "sklearn" in sys.modules:
        import optuna.importance

        return optuna.importance
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # "import sklearn" -> ImportError
    try:
        import optuna.importance
    finally:
        if sys.modules.get("sklearn", ...) is None:
            del sys.modules["sklearn"]
    private.defer_sklearn(_SklearnOnFirstUse)  # Optuna's modules that import scikit-learn
    return optuna.importance


class _SklearnOnFirstUse:
    """Stands in for Optuna's deferred-import guard of a module whose scikit-learn import was
    held back: `check()` (called before the module uses `RandomForestRegressor`) imports it."""

    def __init__(self, module: ModuleType) -> None:
        self._module = module

    def is_successful(self) -> bool:
        return importlib.util.find_spec("sklearn") is not None

    def check(self) -> None:
        from sklearn.ensemble import RandomForestRegressor  # ImportError if not installed

        self._module.RandomForestRegressor = RandomForestRegressor


def _evaluator():
    """PED-ANOVA: 0.03 s on a 24-trial study where Optuna's default (fANOVA, a random forest)
    took 1.8 s, and every `run` ends with a report (the importances and their plot)."""
    return importance_module().PedAnovaImportanceEvaluator()


def _importances(study: optuna.Study) -> dict[str, float]:
    """Param importances of the params that vary among complete trials, most important first;
    empty when fewer than two complete trials differ."""
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    varying = [name for name in (complete[0].params if complete else {})
               if len({repr(t.params.get(name)) for t in complete}) > 1]
    if len(complete) < 2 or not varying:
        return {}
    if len(varying) == 1:
        return {varying[0]: 1.0}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = importance_module().get_param_importances(
                study, params=varying, evaluator=_evaluator(), **pareto.target_kwargs(study))
    except Exception:  # e.g. a categorical param seen with one value in complete trials
        return {}
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))


def _best(study: optuna.Study) -> FrozenTrial | None:
    """The study's best own trial (never one a warm start added from an earlier study)."""
    return own_best(study)


def _failures(trials: list[FrozenTrial], most: int = 20) -> list[str]:
    """The trials failed for good, each with its reason, and how many failures were retried."""
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if not failed:
        return []
    for_good = [t for t in failed if failed_for_good(t)]
    lines = [f"Failed: {len(for_good)} for good, {len(failed) - len(for_good)} retried "
             "(their worker was lost or stopped; each has a copy).", ""]
    if for_good:
        lines += ["### Failed for good", "", "| trial | params | why |", "|---|---|---|"]
        for trial in for_good[:most]:
            params = ", ".join(f"{k}={_value_text(v)}" for k, v in trial.params.items())
            why = trial.user_attrs.get(TRIAL_REASON_ATTR, "(no reason recorded)")
            lines.append(f"| {trial.number} | {params} | {why.replace('|', '/')} |")
        if len(for_good) > most:
            lines.append(f"| ... | {len(for_good) - most} more | `fer-search status` |")
        lines.append("")
    return lines


def _value_text(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)

