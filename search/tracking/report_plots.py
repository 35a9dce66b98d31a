"""The report's Optuna plots: one PNG each (matplotlib) and one interactive HTML page holding them
all (plotly, `report_page`), written into a folder the report uploads as `plots/`.

PNGs come from optuna.visualization.matplotlib rather than plotly + kaleido: kaleido 1.x drives a
Chrome it must find or download, which a worker machine need not have. PNGs are written with
fast zlib compression.

matplotlib and Optuna's plots are imported when a report is drawn, not with this module: `run`
and `worker` import the report (through search.study.loop) at start.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from search.tracking import pareto
from search.tracking.importances import evaluator, importance_module
from search.tracking.report_page import HTML_PAGE, html_page

PLOTS_DIR = "plots"
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


def draw_plots(study: optuna.Study, metric: str, importances: dict[str, float],
               folder: Path) -> dict[str, str]:
    """Each plot as `folder/<name>.png`, and all of them in `folder/report.html`; returns the
    plots not drawn and why."""
    # matplotlib and Optuna's plots imported here (~0.7 s measured, plotly on the first figure):
    # `run` and `worker` import the report (search.study.loop) and draw only when it is refreshed.
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
        (folder / HTML_PAGE).write_text(html_page(study.study_name, figures))
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
        return {"target_name": metric, "params": list(importances), "evaluator": evaluator()}
    return {"target_name": metric}


def _figure_of(axes):
    """The Figure of what optuna's matplotlib functions return: Axes, or an array of them."""
    first = np.asarray(axes, dtype=object).ravel()[0]
    return first.get_figure()
