"""The study run's description, in Markdown: what a person reads first about a study.

The best trial, its value(s) and params, a link to its run, the trials failed for good and why,
the spread of repeats or the Pareto front, the versions registered from the study and their
aliases, the trial counts, the importances and where the plots are. Text only: what it shows is
gathered by the caller (`report.refresh`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import SAMPLER_ATTR, TRIAL_REASON_ATTR, failed_for_good
from search.storage.counts import queued_in
from search.tracking import pareto
from search.tracking.report_page import HTML_PAGE
from search.tracking.report_plots import PLOTS_DIR
from search.tracking.runs import ML_VIEW, experiment_runs_path
from search.tracking.spread import report_lines


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
    queued = queued_in(study)  # a grid's points waiting in the queue (search.queue)
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
        ) + (f", {queued} grid points queued" if queued else "") + ".",
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
