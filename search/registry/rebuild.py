"""A trial's model rebuilt for promotion, checked against the trial and scored on test, with what
registering it needs (its version tags and description).

    trial's TrainConfig + trained weights (from its MLflow run) -> the full VGG16 + head
    -> same validation score as the trial? (`check_reproduced`) -> test split score
    -> the exported model predicts what the cached path does on a sample of test faces?
       (`check_exported`; heads trained on cached features are scored on them:
       trainer.evaluate_trained; others through the full model)

Nothing here takes the promotion lock or touches the registry: `promotion.promote` calls
`build` outside the lock (the slow part), then registers what it returns under it.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial

import trainer
from search.contracts import PARENT_RUN_ATTR
from search.registry import registration, repeat_promotion
from search.registry.refs import RegistryError
from search.registry.registration import Source
from search.spec.loader import StudySpec
from search.tracking.pareto import value_of
from search.tracking.runs import Tracker, dataset_key
from search.trial.data_provider import DataProvider
from search.urls import mask_url

# The rebuilt model must score what the trial recorded: the same weights on the same faces.
SANITY_TOLERANCE = 1e-6


@dataclass
class Built:
    """A rebuilt, checked model and the keyword arguments registering it takes
    (`registration.log_and_register`, through `choice.Choice.registration`)."""

    model: object
    registration: dict


def build(tracker: Tracker, study: optuna.Study, trial: FrozenTrial, spec: StudySpec,
          metric: str, run_id: str, data: DataProvider | None, cache_dir,
          urls: tuple[str, str]) -> Built:
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
    return Built(model, {
        "source": source, "image_size": config.image_size, "tags": tags,
        "test_metrics": test_metrics,
        "description": registration.version_description(
            source, params=trial.params, val=val, test=test, fingerprint=dataset.fingerprint,
            metric=metric) + (seeds.text if seeds else ""),
    })


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
