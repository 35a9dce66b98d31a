"""A study's parameter importances for its report: PED-ANOVA's, with `optuna.importance` imported
without scikit-learn.

Every `run` ends with a report, so what it imports is paid by every study. PED-ANOVA needs no
scikit-learn; Optuna's `importance` package still imports scikit-learn (and SciPy, ~1.2-1.7 s)
for its other evaluators, so `importance_module` imports it with scikit-learn held back, and
those evaluators import it when first used.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
from types import ModuleType

import optuna
from optuna.trial import TrialState

from search.storage import optuna_private as private
from search.tracking import pareto


def importance_module() -> ModuleType:
    """`optuna.importance`, imported without scikit-learn when nothing has imported it yet.

    The package imports its fANOVA and mean-decrease-impurity evaluators, which import
    scikit-learn inside Optuna's `try_import` (an ImportError is kept for later). While the
    package is imported, `sys.modules["sklearn"]` is None, so that import fails at once; then
    each such module gets `_SklearnOnFirstUse`, which imports scikit-learn when the evaluator is
    built (what `try_import`'s `check()` guards), so both still work in this process.
    """
    # Imported here, not at the top: the import itself is what this function controls.
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
        # scikit-learn (~1.7 s measured, with SciPy) only for an evaluator the report never uses.
        from sklearn.ensemble import RandomForestRegressor  # ImportError if not installed

        self._module.RandomForestRegressor = RandomForestRegressor


def evaluator():
    """PED-ANOVA: 0.03 s on a 24-trial study where Optuna's default (fANOVA, a random forest)
    took 1.8 s, and every `run` ends with a report (the importances and their plot)."""
    return importance_module().PedAnovaImportanceEvaluator()


def importances(study: optuna.Study) -> dict[str, float]:
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
                study, params=varying, evaluator=evaluator(), **pareto.target_kwargs(study))
    except Exception:  # e.g. a categorical param seen with one value in complete trials
        return {}
    return dict(sorted(found.items(), key=lambda kv: -kv[1]))
