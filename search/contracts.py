"""Names and numbers that more than one module (or another program) relies on, defined once.

Optuna attribute keys and MLflow tag keys are read back by other commands (`promote` reads what
`run` wrote) and by people (the MLflow UI, optuna-dashboard), so a key renamed in one place only
would silently break the other side. Exit codes are read by shells and supervisors, and `run
--workers N` sums up its workers' codes. This module imports nothing heavy: every command may
import it.
"""

from __future__ import annotations

import re

# ------------------------------------------------------------------ Optuna trial user attributes

TRIAL_RUN_ID_ATTR = "mlflow_run_id"  # the trial's MLflow run
TRIAL_REASON_ATTR = "reason"  # why a trial failed or was pruned, in words
TRIAL_FAILURE_ATTR = "failure"  # PERMANENT_FAILURE: never re-queued (the loss diverged)
PERMANENT_FAILURE = "permanent"


def failed_for_good(trial) -> bool:
    """A FAIL trial with the permanent mark (its own merits, or given up after MAX_RETRY):
    never re-queued; what `max_failed_trials` counts. Other FAIL trials have a queued copy."""
    return trial.state.name == "FAIL" and \
        trial.user_attrs.get(TRIAL_FAILURE_ATTR) == PERMANENT_FAILURE


# A trial a warm start added from an earlier study carries this user attr (its source,
# `study#number`): it was not run here, so the study's best, its budget and promotion skip it.
WARM_START_FROM_ATTR = "warm_start_from"
WARM_START_QUEUED_ATTR = "warm_start_queued"  # a random/TPE trial queued first: its source


def is_added(trial) -> bool:
    """A trial a warm start added from an earlier study (not run in this one)."""
    return WARM_START_FROM_ATTR in trial.user_attrs


def feasible(trial) -> bool:
    """Whether a trial meets every constraint it was given (Optuna's constraint values: each
    <= 0 when met, search.trial.objectives); a trial of a study without constraints does."""
    return all(value <= 0 for value in trial.constraints.values())


def own_best(study):
    """The study's best COMPLETE trial among its own (never one a warm start added: its run,
    weights and test score are the earlier study's) that meets every constraint, by its first
    objective (several objectives: the first, ties to the earliest); None when it has none."""
    if len(study.directions) == 1:
        try:
            best = study.best_trial  # Optuna's best among the feasible ones
        except ValueError:  # no complete (feasible) trial yet
            return None
        if not is_added(best):
            return best
    own = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
           and not is_added(t) and feasible(t)]
    if not own:
        return None
    pick = max if study.directions[0].name == "MAXIMIZE" else min
    return pick(own, key=lambda t: t.values[0])


# A retried trial names the trial it carries on: Optuna's heartbeat retry sets the system attr
# `failed_trial` (and `retry_history`); the grid queue sets the user attr of the same name when
# it re-queues an interrupted point.
FAILED_TRIAL_ATTR = "failed_trial"
RESUMED_FROM_RUN = "resumed_from_run"  # trial user attr and MLflow tag: the run carried on
RESUMED_FROM_EPOCH = "resumed_from_epoch"  # ... and the checkpointed epoch it resumed after
RESUMED_BY_RUN_TAG = "resumed_by_run"  # on the dead run: the run that carried it on
# The trials a trial shared its claim (and so its training pass) with, written before training:
# if their worker dies, each was a suspect, and its copy trains alone
# (search.study.recovery.recover_lost).
PASS_MATES_ATTR = "pass_mates"
# A trial of a study whose spec names a cost (search.trial.objectives): its model's costs,
# `trainer.COST_NAMES` and the measuring protocol, measured before it trained.
COSTS_ATTR = "costs"
# A trial of a spec with `repeats: N` (search.trial.repeats) trained N seeds of its configuration;
# its value is their mean, and these user attrs hold the rest (written before the tell): the
# seeds and each one's value (lists, in seed order), their sample std (ddof 1), min and max,
# and the representative seed (the one whose value is closest to the mean: its weights are the
# trial's, and what `promote` registers). Read by the leaderboard, the report and promotion.
REPEAT_SEEDS_ATTR = "repeat_seeds"
REPEAT_VALUES_ATTR = "repeat_values"
REPEAT_STD_ATTR = "repeat_std"
REPEAT_MIN_ATTR = "repeat_min"
REPEAT_MAX_ATTR = "repeat_max"
REPEAT_REPRESENTATIVE_ATTR = "repeat_representative"

# ------------------------------------------------------------------ Optuna study user attributes

SPEC_ATTR = "spec_yaml"  # the spec's text (passwords masked): what `promote` rebuilds from
SPEC_PATH_ATTR = "spec_path"  # the spec file, as given when the study was created
PARENT_RUN_ATTR = "mlflow_parent_run_id"  # the study's MLflow parent run
METRIC_ATTR = "metric"
SAMPLER_ATTR = "sampler"
MODEL_NAME_ATTR = "model_name"

# ------------------------------------------------------------------------------- MLflow tags

KIND_TAG = "fer_search.kind"  # "study" (parent run) or "trial" (nested run)
FAIL_REASON_TAG = "fail_reason"  # why a run ended FAILED or KILLED
FEASIBLE_TAG = "feasible"  # a constrained study's trial run: "true" when it meets every bound

# ------------------------------------------------------------------------------ exit codes

EXIT_OK = 0
EXIT_FAILURE = 1  # a runtime failure (a study failing, a database gone)
EXIT_BAD_INPUT = 2  # input the user can fix; one line on stderr names it
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
# A trial stuck inside an epoch past trial_timeout: recorded, then the worker exits for its
# supervisor to restart it (sysexits' EX_TEMPFAIL). search.trial.deadline.
EXIT_TRIAL_STUCK = 75
# The study's failure budget (`max_failed_trials`) is spent: the worker stopped before its next
# claim, holding nothing. Final: a supervisor that restarts it would see the same.
EXIT_FAILED_TRIALS = 3

# ------------------------------------------------------------------------- model registry

# Names end up in URLs (`models:/name@alias`), file names and MLflow experiment names.
MODEL_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
MODEL_NAME_EXPECTED = "a name of letters, digits, '_', '.' and '-', starting with a letter or digit"
DEFAULT_MODEL_NAME = "expw-vgg16"
CHAMPION_ALIAS = "champion"
# `fer-search promote --rule`: which trial is registered (search.registry.choice says how);
# the parser lists them without importing the registry.
PROMOTION_RULES = ("best-feasible", "best")
DEFAULT_PROMOTION_RULE = PROMOTION_RULES[0]

# ------------------------------------------------------------------------------- serving

# `fer-search serve`'s limits by default: the CLI's parser shows them (without importing the
# server) and search.registry.serve.Limits defaults to them.
DEFAULT_MAX_BODY_MB = 10.0
DEFAULT_MAX_BATCH = 256
DEFAULT_MAX_CONCURRENCY = 4
