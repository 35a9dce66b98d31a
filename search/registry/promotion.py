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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

import trainer
from search.contracts import (
    CHAMPION_ALIAS,
    METRIC_ATTR,
    MODEL_NAME_ATTR,
    PARENT_RUN_ATTR,
    SPEC_ATTR,
    SPEC_PATH_ATTR,
    TRIAL_RUN_ID_ATTR,
)
from search.errors import InputError
from search.registry import aliases, registration, repeat_promotion
from search.registry.choice import choose
from search.registry.refs import RegistryError, check_model_name, registry_tracker
from search.registry.registration import Source
from search.spec.loader import StudySpec, spec_from_text
from search.storage.locks import named_lock
from search.storage.sessions import load_study_named, storage_session
from search.tracking.pareto import value_of
from search.tracking.runs import Tracker, dataset_key
from search.trial.data_provider import DataProvider
from search.urls import mask_url

# The rebuilt model must score what the trial recorded: the same weights on the same faces.
SANITY_TOLERANCE = 1e-6
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
    run_id = _trial_run_id(trial)
    tracker = registry_tracker(tracking_uri)
    client = tracker.client

    # The slow part (rebuild and score) outside the lock, skipped if the trial is registered.
    built = None
    if registration.version_of_run(client, name, run_id) is None:
        built = _build(tracker, study, trial, spec, metric, run_id, data, cache_dir,
                       (storage_url, tracking_uri))
    with champion_lock(tracking_uri, storage_url, name):
        version = registration.version_of_run(client, name, run_id)
        reused = version is not None
        if version is None:  # a version seen above and deleted since costs a rebuild
            built = built or _build(tracker, study, trial, spec, metric, run_id, data,
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


@dataclass
class _Built:
    model: object
    registration: dict


def _build(tracker: Tracker, study: optuna.Study, trial: FrozenTrial, spec: StudySpec,
           metric: str, run_id: str, data: DataProvider | None, cache_dir,
           urls: tuple[str, str]) -> _Built:
    """Rebuilds the trial's full model, checks it against the trial, scores it on test (on
    cached features when it trained on them, then checks the exported model against them on a
    sample of faces) and logs the test scores to the trial's run; returns it with what
    registering it needs.
    `urls`: the storage URL (its lock guards a shared cache folder) and the tracking URI."""
    storage_url, tracking_uri = urls
    config = spec.train_config(trial.params)
    repeat = repeat_promotion.chosen(trial)  # repeats: the representative seed is registered
    if repeat is not None:
        config = config.replace(seed=repeat.seed)
    weights = _trial_weights(tracker, run_id, trial.number, tracking_uri)
    provider = data or DataProvider(spec, Path(cache_dir) if cache_dir else None,
                                    storage_url=storage_url)
    dataset = provider.get(config.image_size)
    network = trainer.build_trained(config, weights, dataset.class_names)
    model = network.full
    # A head trained on cached features is scored on them (VGG16 runs over no val face, and
    # over the test faces once per data and base, into the cache); the exported model is then
    # checked against that path on a sample of test faces. Anything else: the full model.
    val = trainer.evaluate_trained(network, config, weights, dataset, "val")
    check_reproduced(trial, metric, val, dataset.fingerprint, _study_fingerprint(tracker, study),
                     expected=repeat.value if repeat is not None
                     else value_of(study, trial, metric))  # several objectives: its metric's
    test = trainer.evaluate_trained(network, config, weights, dataset, "test")
    if trainer.scores_on_features(config):
        check_exported(trial, trainer.check_export(model, config, weights, dataset, "test"))
    val_metrics, test_metrics = _metrics(val, "val"), _metrics(test, "test")
    # The test metrics are logged with the model (`log_and_register`), linked to it and the data.
    tracker.log_evaluation(run_id, test, "test")
    tags = {
        "study": study.study_name,
        "trial_number": trial.number,
        **config.to_dict(),
        **val_metrics,
        **test_metrics,
        "data_fingerprint": dataset.fingerprint,
        "metric": metric,
        "direction": spec.direction,  # the metric's (one of several objectives)
    }
    seeds = None if repeat is None else repeat_promotion.score_seeds(
        tracker, run_id, repeat, config, test, network, dataset, metric, tracking_uri)
    tags.update(seeds.tags if seeds else {})
    study_run = study.user_attrs.get(PARENT_RUN_ATTR)
    if study_run:
        tags["study_run_id"] = study_run
    source = Source(study=study.study_name, trial_number=trial.number, run_id=run_id,
                    experiment_id=tracker.client.get_run(run_id).info.experiment_id,
                    study_run_id=study_run, dataset=dataset_key(dataset))
    return _Built(model, {
        "source": source, "image_size": config.image_size, "tags": tags,
        "test_metrics": test_metrics,
        "description": registration.version_description(
            source, params=trial.params, val=val, test=test, fingerprint=dataset.fingerprint,
            metric=metric) + (seeds.text if seeds else ""),
    })


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


def champion_score_name(metric: str) -> str:
    """The test metric matching a study's validation metric: val_accuracy -> test_accuracy."""
    return "test_" + metric.removeprefix("val_")


def check_reproduced(
    trial: FrozenTrial,
    metric: str,
    val: trainer.Evaluation,
    fingerprint: str,
    study_fingerprint: str | None = None,
    expected: float | None = None,
) -> None:
    """Raises `RegistryError` unless the rebuilt model scores the trial's value on val.

    The trial's value is what training measured (on cached features when the base is frozen);
    `val` is the rebuilt weights' score: on the same cached features for a head trained on
    them (the exported model is checked against that path by `check_exported`), else through
    the whole network on raw pixels. Equal scores show that the weights are the ones trained
    and that the dataset has not changed since. `expected`: the value to check in place of the
    trial's (a repeats trial's registered seed's, search.registry.repeat_promotion).
    """
    got = {"val_accuracy": val.accuracy, "val_macro_f1": val.macro_f1}.get(metric)
    recorded = trial.value if expected is None else expected  # a repeats trial: one seed's
    if got is None or recorded is None:
        raise RegistryError(f"cannot check the rebuilt model: unknown study metric {metric!r}")
    if abs(got - recorded) <= SANITY_TOLERANCE:
        return
    then = f"; at study time {study_fingerprint}" if study_fingerprint else ""
    raise RegistryError(
        f"the rebuilt model of trial {trial.number} scores {metric} {got:.6f} on the validation "
        f"split, but the trial recorded {recorded:.6f}: the cached-feature path and the "
        f"exported model disagree, or the dataset changed since the study ran (data fingerprint "
        f"now {fingerprint}{then}); nothing was registered"
    )


def check_exported(trial: FrozenTrial, check: trainer.ExportCheck) -> None:
    """Raises `RegistryError` unless the exported model gave the cached path's probabilities on
    the sampled faces (`trainer.check_export`): else the scores computed on cached features are
    not the scores of the model that would be registered."""
    if check.ok:
        return
    raise RegistryError(
        f"the exported model of trial {trial.number} disagrees with the cached-feature path on "
        f"{check.faces} {check.split} faces: probabilities differ by up to {check.max_gap:.3g} "
        f"(allowed {check.tolerance:g}); the feature cache may be stale or corrupt (remove its "
        f"features/ folder and promote again); nothing was registered"
    )


def _trial_run_id(trial: FrozenTrial) -> str:
    run_id = trial.user_attrs.get(TRIAL_RUN_ID_ATTR)
    if not run_id:
        raise RegistryError(
            f"trial {trial.number} has no MLflow run (no 'mlflow_run_id' attribute)"
        )
    return run_id


def _trial_weights(tracker: Tracker, run_id: str, number: int, tracking_uri: str) -> list:
    try:
        return tracker.load_top_weights(run_id)
    except Exception as exc:  # run deleted, artifacts moved, another tracking URI
        raise RegistryError(
            f"cannot read the trained weights of trial {number} (MLflow run {run_id}) from "
            f"{mask_url(tracking_uri)}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
        ) from None


def _study_fingerprint(tracker: Tracker, study: optuna.Study) -> str | None:
    """The data fingerprint the study's parent run recorded, for error messages only."""
    parent = study.user_attrs.get(PARENT_RUN_ATTR)
    if not parent:
        return None
    with contextlib.suppress(Exception):  # a deleted parent run only costs the hint
        return tracker.client.get_run(parent).data.params.get("data_fingerprint")
    return None


def _metrics(evaluation: trainer.Evaluation, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_accuracy": float(evaluation.accuracy),
        f"{prefix}_macro_f1": float(evaluation.macro_f1),
        f"{prefix}_loss": float(evaluation.loss),
    }


def _tag_metrics(tags: dict[str, str], prefix: str) -> dict[str, float]:
    """The version's `prefix`_accuracy, _macro_f1 and _loss, read back from its tags."""
    names = (f"{prefix}_accuracy", f"{prefix}_macro_f1", f"{prefix}_loss")
    return {n: value for n in names if (value := aliases.float_tag(tags, n)) is not None}
