"""Promote a study's best trial to the MLflow model registry.

::

    best trial -> TrainConfig + trained weights (from its MLflow run) -> the full VGG16 + head
    -> same validation score as the trial? -> test split score -> the exported model predicts
       what the cached path does on a sample of test faces? (heads trained on cached features
       are scored on them: trainer.evaluate_trained; others through the full model)
    -- under the model's lock --
    -> already registered from this trial? reuse that version : log the pyfunc model into the
       trial's run and register a new version (search.registry.registration)
    -> `champion` if it beats the current champion's test score, else `challenger`; the move
       recorded (search.registry.aliases); the registered model's description names the champion

Registry stages are deprecated in MLflow; aliases replace them. A version's tags record where it
came from (study, trial, every TrainConfig field, data fingerprint) and how it scored (val_* and
test_*), so a later promotion compares against the champion without recomputing anything.

Racing promotions: the read-compare-set of the aliases and the "is this trial registered yet"
check run under a named lock (`champion_lock`), so two `fer-search promote` on one model name
end with the better version as champion and no trial registered twice. See ARCHITECTURE.md.

Here: the order of the steps and the lock. The study read (`study_snapshot`), the trial chosen
(`choice`), the model rebuilt, checked and scored (`rebuild`), registered (`registration`), its
alias moved (`aliases`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from search.contracts import CHAMPION_ALIAS, METRIC_ATTR, MODEL_NAME_ATTR
from search.registry import aliases, registration
from search.registry.choice import choose
from search.registry.rebuild import build
from search.registry.refs import RegistryError, check_model_name, registry_tracker
from search.registry.study_snapshot import complete_trial, load_study, study_spec, trial_run_id
from search.storage.locks import named_lock
from search.trial.data_provider import DataProvider

# Stores `search.storage.sessions.named_lock` can lock in (a file lock, an advisory lock).
_LOCKABLE_SCHEMES = ("sqlite:", "postgresql")


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` registered.

    Attributes:
        model_name: the registered model.
        version: the version's number (new, or the trial's existing one when `reused`).
        alias: ``champion`` or ``challenger``, the alias the version got.
        test_metrics: test_accuracy, test_macro_f1, test_loss of the version.
        score_name: the test metric compared with the champion's (``test_accuracy`` for a study
            optimising ``val_accuracy``).
        score: the version's `score_name`.
        previous_champion_version: the champion before this promotion, or None.
        previous_champion_score: its `score_name` tag, or None.
        trial_number: the promoted trial.
        run_id: the trial's MLflow run, which holds the logged model.
        reason: why the alias went where it went, in words.
        reused: the trial was registered already; no new version was made.
    """

    model_name: str
    version: int
    alias: str
    test_metrics: dict[str, float]
    score_name: str
    score: float
    previous_champion_version: int | None
    previous_champion_score: float | None
    trial_number: int
    run_id: str
    reason: str = ""
    val_metrics: dict[str, float] = field(default_factory=dict)
    reused: bool = False
    chosen: str = ""  # which rule chose the trial, and what it traded (registry.choice)

    @property
    def model_uri(self) -> str:
        """``models:/NAME/VERSION``: this exact version, whatever the aliases do later."""
        return f"models:/{self.model_name}/{self.version}"


def champion_lock(tracking_uri: str, storage_url: str, model_name: str):
    """The lock every promotion to `model_name` takes around registering and moving aliases.

    Keyed on the MLflow store when it is a SQLite or PostgreSQL database (a file lock beside
    the file, an advisory lock in the database): the registry lives there, so every promoter
    of the model shares it, whatever Optuna storage its study is in. With an MLflow HTTP
    server its database is out of reach; then the study's Optuna storage carries the lock,
    which covers promoters sharing that storage (the compose deployment: one PostgreSQL for
    both) but not promoters of studies in other Optuna storages writing to the same server.
    Any other store (MySQL) gets no lock from `named_lock`, as for the study lock.
    """
    shared = tracking_uri if tracking_uri.startswith(_LOCKABLE_SCHEMES) else storage_url
    return named_lock(shared, f"registry-{model_name}")


def promote(
    study_name: str,
    *,
    storage_url: str,
    tracking_uri: str,
    force: bool = False,
    model_name: str | None = None,
    data: DataProvider | None = None,
    cache_dir: Path | str | None = None,
    trial_number: int | None = None,
    rule: str | None = None,
) -> PromotionResult:
    """Registers the best trial of a study as a model version and sets its alias.

    TensorFlow must be loadable (the full model is rebuilt and scored on the test split),
    unless the trial was registered under this model name already.

    Args:
        study_name: the Optuna study.
        storage_url: its storage.
        tracking_uri: the MLflow tracking and registry store holding the study's runs.
        force: make the version champion even if it does not beat the current one.
        model_name: the registered model; default: the one the study's spec names.
        data: a provider that already holds the dataset (e.g. the one a study just ran on).
        cache_dir: where crops and features are cached, if not the spec's ``data.cache_dir``.
        trial_number: promote this complete trial instead of the best one.
        rule: which trial is the best (search.registry.choice; default best-feasible).

    Returns:
        What was registered and where the aliases went.

    Raises:
        InputError: unknown study, trial or rule, no complete trial (none that meets every
            constraint, by the default rule), study not made by fer-search, bad name.
        RegistryError: the trial's run or weights are gone, the rebuilt model does not
            reproduce the trial's validation score, or the exported model disagrees with the
            cached-feature path it was scored on.
    """
    if model_name is not None:
        check_model_name(model_name)  # before anything slow
    study = load_study(study_name, storage_url)
    choice = choose(study, storage_url, rule,  # by the rule, or --trial (search.registry.choice)
                    None if trial_number is None else complete_trial(study, trial_number))
    trial = choice.trial
    spec = study_spec(study)
    name = check_model_name(model_name or study.user_attrs.get(MODEL_NAME_ATTR) or spec.model_name)
    metric = study.user_attrs.get(METRIC_ATTR, spec.metric)
    run_id = trial_run_id(trial)
    tracker = registry_tracker(tracking_uri)
    client = tracker.client

    # The slow part (rebuild and score) outside the lock, skipped if the trial is registered.
    built = None
    if registration.version_of_run(client, name, run_id) is None:
        built = build(tracker, study, trial, spec, metric, run_id, data, cache_dir,
                       (storage_url, tracking_uri))
    with champion_lock(tracking_uri, storage_url, name):
        version = registration.version_of_run(client, name, run_id)
        reused = version is not None
        if version is None:  # a version seen above and deleted since costs a rebuild
            built = built or build(tracker, study, trial, spec, metric, run_id, data,
                                    cache_dir, (storage_url, tracking_uri))
            created = registration.log_and_register(tracker, run_id, built.model, name=name,
                                                    **choice.registration(built.registration))
            version = client.get_model_version(name, str(created.version))  # with its tags
        number = int(version.version)
        score_name = champion_score_name(metric)
        score = aliases.float_tag(version.tags, score_name)
        if score is None:
            raise RegistryError(f"{name} version {number} has no {score_name} tag")
        decision = aliases.choose_alias(
            client, name, number, score_name, score,
            maximize=spec.direction == "maximize", force=force,  # its metric's, of several
        )
        aliases.move_alias(client, name, decision.alias, number, study=study.study_name,
                           trial=trial.number, score_name=score_name, score=score,
                           reason=decision.reason)
        champion = aliases.version_by_alias(client, name, CHAMPION_ALIAS)
        client.update_registered_model(name, registration.model_description(name, champion))
    tags = version.tags
    return PromotionResult(
        model_name=name,
        version=number,
        alias=decision.alias,
        test_metrics=_tag_metrics(tags, "test"),
        score_name=score_name,
        score=score,
        previous_champion_version=decision.previous_version,
        previous_champion_score=decision.previous_score,
        trial_number=trial.number,
        run_id=run_id,
        reason=decision.reason,
        val_metrics=_tag_metrics(tags, "val"),
        reused=reused,
        chosen=choice.note,
    )


def champion_score_name(metric: str) -> str:
    """The test metric matching a study's validation metric: val_accuracy -> test_accuracy."""
    return "test_" + metric.removeprefix("val_")


def _tag_metrics(tags: dict[str, str], prefix: str) -> dict[str, float]:
    """The version's `prefix`_accuracy, _macro_f1 and _loss, read back from its tags."""
    names = (f"{prefix}_accuracy", f"{prefix}_macro_f1", f"{prefix}_loss")
    return {n: value for n in names if (value := aliases.float_tag(tags, n)) is not None}
