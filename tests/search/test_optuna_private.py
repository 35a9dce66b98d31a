"""Optuna's private names: exactly what search/storage/optuna_private.py relies on exists, with
the shape it uses, on the installed Optuna (scripts/test-newest-optuna.sh runs this file on the
newest one allowed); and no other module of search/ or benchmarks/ uses one."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.storages._cached_storage import _CachedStorage, _StudyInfo
from optuna.storages._rdb import models
from optuna.storages._rdb.storage import _create_scoped_session
from optuna.trial import TrialState

from search.storage import optuna_private as private

ROOT = Path(__file__).resolve().parents[2]
ADAPTER = ROOT / "search" / "storage" / "optuna_private.py"
_PRIVATE_MODULE = re.compile(r"^optuna(\.\w+)*\._\w")


def _upgrade_says(what: str) -> str:
    return (f"Optuna {optuna.__version__}: {what}; search/storage/optuna_private.py relies on "
            f"it (find a public route or adapt the adapter)")


# ------------------------------------------------------------------- what the adapter relies on


def _params(function) -> list[str]:
    return list(inspect.signature(function).parameters)


@pytest.mark.parametrize(("name", "params"), [
    ("_get_prepared_new_trial", ["self", "study_id", "template_trial", "session"]),
    ("_set_trial_attr_without_commit", ["self", "session", "model_cls", "trial_id", "key",
                                        "value"]),
    ("_set_trial_value_without_commit", ["self", "session", "trial", "objective", "value"]),
    ("_set_trial_intermediate_value_without_commit", ["self", "session", "trial_id", "step",
                                                      "intermediate_value"]),
    ("_get_stale_trial_ids", ["self", "study_id"]),
    (private.CREATE_NEW_TRIAL, ["self", "study_id", "template_trial"]),
])
def test_rdb_storage_has_the_private_methods_the_adapter_calls(name, params):
    method = getattr(optuna.storages.RDBStorage, name, None)
    assert method is not None, _upgrade_says(f"RDBStorage.{name} is gone")
    assert _params(method) == params, _upgrade_says(f"RDBStorage.{name} takes {_params(method)}")


def test_the_scoped_session_helper_and_the_tables_have_the_shape_used():
    assert _params(_create_scoped_session) == ["scoped_session", "ignore_integrity_error"], \
        _upgrade_says("_create_scoped_session's parameters changed")
    columns = {
        private.TRIALS: {"trial_id", "number", "study_id", "state", "datetime_start",
                         "datetime_complete"},
        private.SYSTEM_ATTRS: {"trial_id", "key", "value_json"},
        private.USER_ATTRS: {"trial_id", "key", "value_json"},
        models.TrialHeartbeatModel: {"trial_id", "heartbeat"},
    }
    for model, wanted in columns.items():
        found = set(model.__table__.columns.keys())
        assert wanted <= found, _upgrade_says(f"{model.__name__} lacks {wanted - found}")
    assert private.TRIALS.__tablename__ == "trials"  # claims' index is on this table
    for model in (models.StudyModel, models.TrialModel):
        assert "for_update" in _params(model.find_or_raise_by_id), \
            _upgrade_says(f"{model.__name__}.find_or_raise_by_id takes no for_update")
    assert _params(models.TrialHeartbeatModel.where_trial_id)[:3] == \
        ["trial_id", "session", "for_update"], _upgrade_says("where_trial_id changed")


def test_the_cache_calls_no_private_storage_method_but_those_retried():
    """Every private RDBStorage method Optuna's cache calls directly is in CACHE_CALLS (or is
    CREATE_NEW_TRIAL): ResilientRDBStorage retries those; one missing would not be retried."""
    called = set(re.findall(r"self\._backend\.(_\w+)\(", inspect.getsource(_CachedStorage)))
    known = {*private.CACHE_CALLS, private.CREATE_NEW_TRIAL}
    assert called <= known, _upgrade_says(f"the cache now calls {sorted(called - known)}")
    assert set(private.CACHE_CALLS) <= called, \
        _upgrade_says(f"the cache no longer calls {sorted(set(private.CACHE_CALLS) - called)}")
    for name in private.CACHE_CALLS:
        assert callable(getattr(optuna.storages.RDBStorage, name, None)), \
            _upgrade_says(f"RDBStorage.{name} is gone")


def test_a_study_its_cache_and_its_trials_hold_what_the_adapter_reads(tmp_path):
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}")
    study = optuna.create_study(study_name="s", storage=storage)
    cached = study._storage
    assert isinstance(cached, _CachedStorage), _upgrade_says("Study._storage is not the cache")
    assert cached._backend is storage, _upgrade_says("_CachedStorage._backend changed")
    assert study._study_id == storage.get_study_id_from_name("s")
    assert hasattr(cached._lock, "acquire") and isinstance(cached._studies, dict)
    assert isinstance(_StudyInfo().unfinished_trial_ids, set)
    assert _params(cached._add_trials_to_cache) == ["study_id", "trials"]
    trial = study.ask()
    assert isinstance(trial._trial_id, int), _upgrade_says("Trial._trial_id is gone")
    frozen = study.get_trials()[0]
    assert frozen._trial_id == trial._trial_id, _upgrade_says("FrozenTrial._trial_id is gone")
    storage.engine.dispose()


def test_the_scikit_learn_importers_of_optuna_importance_keep_their_guard():
    for name in private.SKLEARN_IMPORTERS:
        module = importlib.import_module(name)
        guard = getattr(module, "_imports", None)
        assert guard is not None and callable(getattr(guard, "is_successful", None)) and \
            callable(getattr(guard, "check", None)), _upgrade_says(f"{name}._imports changed")


def test_the_adapter_writes_inside_one_transaction_through_optunas_tables(tmp_path):
    """The adapter's functions together, on a real storage: a WAITING trial created, started
    with an attr and a first beat (a migrated WAITING trial's claim), inside one session; seen
    by Optuna's public reads; then stale (the first beat counts), and known to the study's
    cache once remembered."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'o.db'}", heartbeat_interval=1,
                                         grace_period=1)
    study = optuna.create_study(study_name="s", storage=storage)
    study_id = storage.get_study_id_from_name("s")
    template = optuna.trial.create_trial(state=TrialState.WAITING, system_attrs={"a": 1})
    with private.session(storage) as session:
        private.lock_study(session, study_id)
        row = private.new_trial(storage, session, study_id, template)
        session.flush()
        trial_id = row.trial_id
    with private.session(storage) as session:
        row = private.lock_trial(session, trial_id)
        row.state = TrialState.RUNNING
        private.set_trial_attr(storage, session, trial_id, "token", "t")
        private.set_trial_attr(storage, session, trial_id, "reason", "r", user=True)
        private.set_intermediate_value(storage, session, trial_id, 0, 0.5)
        private.beat(session, trial_id)
    assert storage.get_trial(trial_id).state == TrialState.RUNNING
    frozen = storage.get_trial(trial_id)
    assert frozen.state == TrialState.RUNNING and frozen.system_attrs == {"a": 1, "token": "t"}
    assert frozen.user_attrs == {"reason": "r"} and frozen.intermediate_values == {0: 0.5}
    assert private.trial_id(frozen) == trial_id
    assert private.storage_of(study) is storage
    private.remember_running(study, [(trial_id, frozen.number)])
    trial = optuna.Trial(study, trial_id)
    assert trial.suggest_float("x", 0, 1) is not None  # the cache knows the trial's study
    time.sleep(2.2)
    assert private.stale_trial_ids(storage, study_id) == [trial_id]
    with private.session(storage) as session:
        row = private.lock_trial(session, trial_id)
        private.set_trial_value(storage, session, row, 0, 1.0)
        row.state = TrialState.COMPLETE
    assert storage.get_trial(trial_id).value == 1.0
    storage.engine.dispose()


# ------------------------------------------------------------------- nobody else uses one


def _optuna_private_attrs() -> set[str]:
    """The private attribute names of Optuna's objects that code could reach for."""
    classes = (optuna.storages.RDBStorage, _CachedStorage, optuna.storages.BaseStorage,
               optuna.Study, optuna.Trial, optuna.trial.FrozenTrial, optuna.samplers.BaseSampler)
    names = {name for cls in classes for name in dir(cls)
             if name.startswith("_") and not name.startswith("__")}
    # Instance attributes (set in __init__, so not in dir() of the class).
    return names | {"_storage", "_study_id", "_trial_id", "_backend", "_studies", "_lock",
                    "_imports", "_version_manager", "_cached_frozen_trial"}


def private_uses(source: str, private_attrs: set[str]) -> list[str]:
    """Where `source` uses a private Optuna name: an import from (or a string naming) a private
    Optuna module, an imported private name, `x._name` for a private attribute of Optuna's
    objects (x not `self` or `cls`), or `getattr(x, "_name")`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("optuna"):
            if any(part.startswith("_") for part in node.module.split(".")) or \
                    any(alias.name.startswith("_") for alias in node.names):
                found.append(f"{line}: from {node.module} import ...")
        elif isinstance(node, ast.Import):
            found += [f"{line}: import {alias.name}" for alias in node.names
                      if _PRIVATE_MODULE.match(alias.name)]
        elif isinstance(node, ast.Attribute) and node.attr in private_attrs and not (
                isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
            found.append(f"{line}: .{node.attr}")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and (
                _PRIVATE_MODULE.match(node.value) or node.value in private_attrs):
            found.append(f"{line}: {node.value!r}")
    return found


def test_the_scan_finds_each_kind_of_private_use():
    names = _optuna_private_attrs()
    source = ("from optuna.storages._rdb import models\n"
              "import optuna.storages._rdb.storage\n"
              "from optuna.storages import _CachedStorage\n"
              "study_id = study._study_id\n"
              "backend = getattr(storage, '_backend', storage)\n"
              "storage._set_trial_attr_without_commit(session)\n"
              "MODULES = ('optuna.importance._fanova._fanova',)\n"
              "self._lock = None; self._trial_id(trial)\n")
    assert [hit.split(":")[0] for hit in private_uses(source, names)] == \
        ["1", "2", "3", "4", "5", "6", "7"]


def test_no_module_but_the_adapter_uses_a_private_optuna_name():
    names = _optuna_private_attrs()
    files = sorted([*(ROOT / "search").rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")])
    assert len(files) > 50
    uses = {str(path.relative_to(ROOT)): hits for path in files if path != ADAPTER
            for hits in [private_uses(path.read_text(), names)] if hits}
    assert not uses, ("private Optuna names outside search/storage/optuna_private.py (move "
                      f"them there, each with why no public route replaces it): {uses}")
    assert private_uses(ADAPTER.read_text(), names), "the scan no longer sees the adapter's"
