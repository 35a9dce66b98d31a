"""What the terminal shows: a progress bar over trials, and tables of trials and studies."""

from __future__ import annotations

from optuna.trial import TrialState
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from search.cli.objective_tables import front_table, outcome_text, value_columns
from search.contracts import (
    TRIAL_REASON_ATTR,
    WARM_START_FROM_ATTR,
    WARM_START_QUEUED_ATTR,
    failed_for_good,
    feasible,
    is_added,
)
from search.storage.counts import queued_in
from search.tracking.spread import LEGEND, marks, value_text

_STATE_STYLE = {"COMPLETE": "green", "PRUNED": "yellow", "FAIL": "red", "RUNNING": "cyan",
                "WAITING": "dim"}


class TrialProgress:
    """A bar over this process's trials, with the study's best value so far."""

    def __init__(self, console: Console, metric: str, direction: str) -> None:
        self._metric = metric
        self._direction = direction
        self._progress = Progress(
            TextColumn("[bold]trials[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.description}"),
            console=console,
            transient=False,
        )
        self._task = None

    def __enter__(self) -> TrialProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def start(self, expected: int) -> None:
        self._task = self._progress.add_task("", total=expected or None)

    def advance(self, outcome, study) -> None:
        if self._task is None:
            self.start(0)
        best = _best_value(study)
        last = outcome_text(outcome.value) if outcome.value is not None else outcome.state.name
        text = f"last #{outcome.number}: {last}"
        if best is not None:
            text += f"   best {self._metric} {best:.4f}"
        self._progress.update(self._task, advance=1, description=text)


def _best_value(study) -> float | None:
    try:
        return study.best_value
    except (ValueError, RuntimeError):  # none yet; several objectives (no one best)
        return None


def leaderboard_table(study, metric: str, top: int = 10) -> Table:
    """The best complete trials, best first (several objectives: the Pareto front)."""
    if len(study.directions) > 1:
        return front_table(study, top)
    everyone = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    trials = [t for t in everyone if not is_added(t)]  # a warm start's are not this study's
    up = study.direction.name == "MAXIMIZE"  # those meeting every constraint first
    trials = sorted(trials, key=lambda t: (not feasible(t), -t.value if up else t.value))[:top]
    bounds = value_columns(study, trials)[1:]  # a constrained study's costs and feasibility
    names = _param_names(trials)
    table = Table(title=f"leaderboard: {study.study_name} (top {len(trials)} by {metric})")
    table.add_column("rank", justify="right")
    table.add_column("trial", justify="right")
    for name in names:
        table.add_column(name, justify="right")
    # With repeats (search.tracking.spread): mean ± std, and a mark for configurations within
    # the noise of the best.
    marked = marks(trials, trials[0]) if trials else {}
    table.add_column(metric, justify="right", style="bold")
    if marked:
        table.add_column("vs best")
    for header, _ in bounds:
        table.add_column(header, justify="right")
    table.add_column("seconds", justify="right")
    for rank, trial in enumerate(trials, 1):
        table.add_row(str(rank), str(trial.number), *[_fmt(trial.params.get(n)) for n in names],
                      value_text(trial), *([marked.get(trial.number, "")] if marked else []),
                      *[cell(trial) for _, cell in bounds], _duration(trial))
    table.caption = failures_line(study)
    if marked:
        table.caption = (f"{table.caption}\n" if table.caption else "") + LEGEND
    added = sum(1 for t in everyone if is_added(t))
    if added:
        table.caption = (f"{table.caption}\n" if table.caption else "") + (
            f"not ranked: {added} trials a warm start added from an earlier study "
            f"(`fer-search status {study.study_name}` lists them)")
    return table


def failures_line(study) -> str | None:
    """How many trials failed for good and how many were retried, and where to read why."""
    failed = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
    if not failed:
        return None
    for_good = sum(1 for trial in failed if failed_for_good(trial))
    return (f"{for_good} failed for good, {len(failed) - for_good} failed and retried: "
            f"`fer-search status {study.study_name}` says why")


def trials_table(study) -> Table:
    """Every trial of a study: number, state, params, value, duration."""
    trials = study.get_trials(deepcopy=False)
    names = _param_names(trials)
    queued = queued_in(study)  # a grid's points waiting in the queue: not trials yet
    table = Table(title=f"study {study.study_name}: {len(trials)} trials"
                  + (f", {queued} grid points queued" if queued else ""))
    table.add_column("trial", justify="right")
    table.add_column("state")
    for name in names:
        table.add_column(name, justify="right")
    columns = value_columns(study, trials)  # the metric, or each objective; costs, feasibility
    for header, _ in columns:
        table.add_column(header, justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("why (failed or pruned)", overflow="fold")
    for trial in trials:
        params = trial.params or trial.system_attrs.get("fixed_params", {})
        state = trial.state.name
        table.add_row(
            str(trial.number),
            f"[{_STATE_STYLE.get(state, '')}]{state}[/]",
            *[_fmt(params.get(n)) for n in names],
            *[cell(trial) for _, cell in columns],
            _duration(trial),
            _why(trial),
        )
    table.caption = failures_line(study)
    return table


def _why(trial) -> str:
    if WARM_START_FROM_ATTR in trial.user_attrs:
        return f"warm start: added from {trial.user_attrs[WARM_START_FROM_ATTR]} (not run here)"
    if WARM_START_QUEUED_ATTR in trial.user_attrs and \
            trial.state.name in ("WAITING", "RUNNING", "COMPLETE"):
        return (f"warm start: {trial.user_attrs[WARM_START_QUEUED_ATTR]}'s configuration, "
                "queued first")
    reason = trial.user_attrs.get(TRIAL_REASON_ATTR, "")
    if trial.state.name == "FAIL" and not reason:
        return "(no reason recorded)"
    return reason if trial.state.name in ("FAIL", "PRUNED") else ""


def studies_table(summaries) -> Table:
    table = Table(title="studies")
    for column in ("study", "direction", "trials", "best value", "started"):
        table.add_column(column)
    for s in summaries:
        best = s.best_trial.value if s.best_trial is not None else None
        table.add_row(
            s.study_name,
            ", ".join(d.name.lower() for d in s.directions),
            str(s.n_trials),
            "" if best is None else f"{best:.4f}",
            s.datetime_start.strftime("%Y-%m-%d %H:%M") if s.datetime_start else "",
        )
    return table


def _param_names(trials) -> list[str]:
    names: list[str] = []
    for trial in trials:
        for name in trial.params or trial.system_attrs.get("fixed_params", {}):
            if name not in names:
                names.append(name)
    return names


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _duration(trial) -> str:
    if trial.datetime_start and trial.datetime_complete:
        return f"{(trial.datetime_complete - trial.datetime_start).total_seconds():.1f}"
    return ""
