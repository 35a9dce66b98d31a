"""The study a promotion reads: a snapshot of it in memory (its storage closed at once), the spec
it was created from, a complete trial by number, a trial's MLflow run."""

from __future__ import annotations

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.contracts import SPEC_ATTR, SPEC_PATH_ATTR, TRIAL_RUN_ID_ATTR
from search.errors import InputError
from search.registry.refs import RegistryError
from search.spec.loader import StudySpec, spec_from_text
from search.storage.sessions import load_study_named, storage_session
from search.urls import mask_url


def load_study(study_name: str, storage_url: str) -> optuna.Study:
    """The study, or an `InputError` naming the storage and the studies it does hold.

    A snapshot in memory: the storage (which must exist; it is only read) is closed here."""
    with storage_session(storage_url, read_only=True) as storage:
        load_study_named(study_name, storage, mask_url(storage_url))
        snapshot = optuna.storages.InMemoryStorage()
        optuna.copy_study(from_study_name=study_name, from_storage=storage,
                          to_storage=snapshot)
    return optuna.load_study(study_name=study_name, storage=snapshot)


def complete_trial(study: optuna.Study, number: int) -> FrozenTrial:
    """Trial `number` of the study if it is complete, else an `InputError` listing those that
    are."""
    complete = {t.number: t for t in study.get_trials(deepcopy=False,
                                                      states=(TrialState.COMPLETE,))}
    if number not in complete:
        have = ", ".join(map(str, sorted(complete))) or "none"
        raise InputError(f"--trial: study {study.study_name!r} has no complete trial {number}; "
                         f"complete trials: {have}")
    return complete[number]


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec the study was created from, as kept in its user attributes."""
    text = study.user_attrs.get(SPEC_ATTR)
    if not text:
        raise InputError(
            f"study {study.study_name!r} was not created by fer-search (it keeps no "
            f"{SPEC_ATTR!r} attribute), so its trials cannot be rebuilt"
        )
    return spec_from_text(text, study.user_attrs.get(SPEC_PATH_ATTR, f"{study.study_name}.yaml"))


def trial_run_id(trial: FrozenTrial) -> str:
    """The trial's MLflow run, which holds its weights; `RegistryError` when it has none."""
    run_id = trial.user_attrs.get(TRIAL_RUN_ID_ATTR)
    if not run_id:
        raise RegistryError(
            f"trial {trial.number} has no MLflow run (no 'mlflow_run_id' attribute)"
        )
    return run_id
