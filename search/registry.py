"""The MLflow model registry: promote a study's best trial, fetch a registered model.

`promote` turns the best trial of a study into a registered model version::

    best trial -> TrainConfig + trained weights (from its MLflow run) -> the full VGG16 + head
    -> same validation score as the trial? -> test split score -> pyfunc model logged into the
    trial's run -> new version of the registered model -> alias `champion` if it beats the
    current champion's test score, else `challenger`

Registry stages are deprecated in MLflow; aliases replace them. A version's tags record where it
came from (study, trial, every TrainConfig field, data fingerprint) and how it scored (val_* and
test_*), so a later promotion can compare against the champion without recomputing anything.

`fetch` writes a registered version's `.keras` file and a description of it into a folder.
Model references are ``NAME`` (= ``NAME@champion``), ``NAME@ALIAS`` or ``NAME/VERSION``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial

import trainer
from search.data import DataProvider
from search.errors import InputError, SearchError
from search.spec import StudySpec, spec_from_text
from search.storage import mask_url, storage_session
from search.study import PARENT_RUN_ATTR, SPEC_ATTR, SPEC_PATH_ATTR
from search.tracking import Tracker

CHAMPION = "champion"
CHALLENGER = "challenger"
KERAS_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"
METADATA_FILE = "metadata.json"
# The logged model's name inside the trial's run (MLflow 3 `name`, formerly artifact_path).
LOGGED_MODEL_NAME = "model"
# Pinned from the running environment: MLflow would otherwise infer them by importing the model
# (about 7 s here) and might miss what the shipped trainer code needs.
PIP_PACKAGES = ("tensorflow", "keras", "h5py", "numpy", "pillow", "pandas", "mlflow")
# The rebuilt model must score what the trial recorded: the same weights on the same faces.
SANITY_TOLERANCE = 1e-6
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_ALIAS = re.compile(r"[A-Za-z0-9_-]+")
_REF_HELP = "NAME, NAME@ALIAS or NAME/VERSION (e.g. expw-vgg16@champion or expw-vgg16/3)"


def registry_tracker(tracking_uri: str) -> Tracker:
    """A `Tracker` on the store, with MLflow's download progress bars off (they would garble
    the CLI's output; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true brings them back) and its
    INFO chatter too: importing mlflow resets its logger to INFO after Tracker quietens it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker = Tracker(tracking_uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return tracker


class RegistryError(SearchError):
    """Promotion or fetching failed for a reason other than bad input (CLI exit code 1)."""


@dataclass(frozen=True)
class PromotionResult:
    """What `promote` registered.

    Attributes:
        model_name: the registered model.
        version: the new version's number.
        alias: ``champion`` or ``challenger``, the alias the new version got.
        test_metrics: test_accuracy, test_macro_f1, test_loss of the new version.
        score_name: the test metric compared with the champion's (``test_accuracy`` for a study
            optimising ``val_accuracy``).
        score: the new version's `score_name`.
        previous_champion_version: the champion before this promotion, or None.
        previous_champion_score: its `score_name` tag, or None.
        trial_number: the promoted trial.
        run_id: the trial's MLflow run, which now holds the logged model.
        reason: why the alias went where it went, in words.
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

    @property
    def model_uri(self) -> str:
        """``models:/NAME/VERSION``: this exact version, whatever the aliases do later."""
        return f"models:/{self.model_name}/{self.version}"


# ------------------------------------------------------------------------------------ promote


def promote(
    study_name: str,
    *,
    storage_url: str,
    tracking_uri: str,
    force: bool = False,
    model_name: str | None = None,
    data: DataProvider | None = None,
    cache_dir: Path | str | None = None,
) -> PromotionResult:
    """Registers the best trial of a study as a new model version and sets its alias.

    TensorFlow must be loadable (the full model is rebuilt and scored on the test split).

    Args:
        study_name: the Optuna study.
        storage_url: its storage.
        tracking_uri: the MLflow tracking and registry store holding the study's runs.
        force: make the new version champion even if it does not beat the current one.
        model_name: the registered model; default: the one the study's spec names.
        data: a provider that already holds the dataset (e.g. the one a study just ran on).
        cache_dir: where crops and features are cached, if not the spec's ``data.cache_dir``.

    Returns:
        What was registered and where the aliases went.

    Raises:
        InputError: unknown study, no complete trial, study not made by fer-search, bad name.
        RegistryError: the trial's run or weights are gone, or the rebuilt model does not
            reproduce the trial's validation score.
    """
    if model_name is not None:
        check_model_name(model_name)  # before anything slow
    study = load_study(study_name, storage_url)
    best = best_trial(study, storage_url)
    spec = study_spec(study)
    name = check_model_name(model_name or study.user_attrs.get("model_name") or spec.model_name)
    metric = study.user_attrs.get("metric", spec.metric)
    run_id = _trial_run_id(best)
    config = spec.train_config(best.params)

    tracker = registry_tracker(tracking_uri)
    weights = _trial_weights(tracker, run_id, best.number, tracking_uri)
    dataset = (data or DataProvider(spec, Path(cache_dir) if cache_dir else None)).get(
        config.image_size
    )
    model = trainer.build_model(config, weights, dataset.class_names)
    val = trainer.evaluate(model, dataset.val)
    check_reproduced(best, metric, val, dataset.fingerprint, _study_fingerprint(tracker, study))
    test = trainer.evaluate(model, dataset.test)

    val_metrics = _metrics(val, "val")
    test_metrics = _metrics(test, "test")
    # Before logging the model: MLflow links the run's step-0 metrics to the logged model.
    tracker.log(run_id, metrics=test_metrics)
    tracker.log_evaluation(run_id, test, "test")

    tags = {
        "study": study.study_name,
        "trial_number": best.number,
        **config.to_dict(),
        **val_metrics,
        **test_metrics,
        "data_fingerprint": dataset.fingerprint,
        "metric": metric,
        "direction": study.direction.name.lower(),
    }
    version = _log_and_register(tracker, run_id, model, config.image_size, name, tags)

    score_name = champion_score_name(metric)
    decision = _choose_alias(
        tracker.client, name, version, score_name, test_metrics[score_name],
        maximize=study.direction == optuna.study.StudyDirection.MAXIMIZE, force=force,
    )
    tracker.client.set_registered_model_alias(name, decision.alias, str(version))
    return PromotionResult(
        model_name=name,
        version=version,
        alias=decision.alias,
        test_metrics=test_metrics,
        score_name=score_name,
        score=test_metrics[score_name],
        previous_champion_version=decision.previous_version,
        previous_champion_score=decision.previous_score,
        trial_number=best.number,
        run_id=run_id,
        reason=decision.reason,
        val_metrics=val_metrics,
    )


def load_study(study_name: str, storage_url: str) -> optuna.Study:
    """The study, or an `InputError` naming the storage and the studies it does hold.

    A snapshot in memory: the storage (which must exist; it is only read) is closed here."""
    with storage_session(storage_url, read_only=True) as storage:
        names = optuna.get_all_study_names(storage)
        if study_name not in names:
            raise InputError(
                f"no study named {study_name!r} in {mask_url(storage_url)}; studies there: "
                f"{', '.join(sorted(names)) or 'none'}"
            )
        snapshot = optuna.storages.InMemoryStorage()
        optuna.copy_study(from_study_name=study_name, from_storage=storage,
                          to_storage=snapshot)
    return optuna.load_study(study_name=study_name, storage=snapshot)


def best_trial(study: optuna.Study, storage_url: str) -> FrozenTrial:
    """The study's best complete trial, or an `InputError` saying there is none yet."""
    try:
        return study.best_trial
    except ValueError:  # Optuna's way of saying no trial is complete
        raise InputError(
            f"study {study.study_name!r} in {mask_url(storage_url)} has no complete trial to "
            f"promote yet"
        ) from None


def study_spec(study: optuna.Study) -> StudySpec:
    """The spec the study was created from, as kept in its user attributes."""
    text = study.user_attrs.get(SPEC_ATTR)
    if not text:
        raise InputError(
            f"study {study.study_name!r} was not created by fer-search (it keeps no "
            f"{SPEC_ATTR!r} attribute), so its trials cannot be rebuilt"
        )
    return spec_from_text(text, study.user_attrs.get(SPEC_PATH_ATTR, f"{study.study_name}.yaml"))


def check_model_name(name: str) -> str:
    """`name` if it can be a registered model name in a ``models:/`` reference."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"model name: expected letters, digits, '_', '.' and '-', starting with a letter or "
            f"digit, but got {name!r}"
        )
    return name


def champion_score_name(metric: str) -> str:
    """The test metric matching a study's validation metric: val_accuracy -> test_accuracy."""
    return "test_" + metric.removeprefix("val_")


def check_reproduced(
    trial: FrozenTrial,
    metric: str,
    val: trainer.Evaluation,
    fingerprint: str,
    study_fingerprint: str | None = None,
) -> None:
    """Raises `RegistryError` unless the rebuilt model scores the trial's value on val.

    The trial's value is what training measured (on cached features when the base is frozen);
    the rebuilt model runs raw pixels through the whole network. Equal scores show that the
    exported model is the model that was trained and that the dataset has not changed since.
    """
    got = {"val_accuracy": val.accuracy, "val_macro_f1": val.macro_f1}.get(metric)
    if got is None or trial.value is None:
        raise RegistryError(f"cannot check the rebuilt model: unknown study metric {metric!r}")
    if abs(got - trial.value) <= SANITY_TOLERANCE:
        return
    then = f"; at study time {study_fingerprint}" if study_fingerprint else ""
    raise RegistryError(
        f"the rebuilt model of trial {trial.number} scores {metric} {got:.6f} on the validation "
        f"split, but the trial recorded {trial.value:.6f}: the cached-feature path and the "
        f"exported model disagree, or the dataset changed since the study ran (data fingerprint "
        f"now {fingerprint}{then}); nothing was registered"
    )


def _trial_run_id(trial: FrozenTrial) -> str:
    run_id = trial.user_attrs.get("mlflow_run_id")
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
    try:
        return tracker.client.get_run(parent).data.params.get("data_fingerprint")
    except Exception:  # a deleted parent run only costs the hint
        return None


def _metrics(evaluation: trainer.Evaluation, prefix: str) -> dict[str, float]:
    return {
        f"{prefix}_accuracy": float(evaluation.accuracy),
        f"{prefix}_macro_f1": float(evaluation.macro_f1),
        f"{prefix}_loss": float(evaluation.loss),
    }


# ------------------------------------------------------------------------- logging the model


def pip_requirements() -> list[str]:
    """``package==version`` for what loading the pyfunc model needs, read from this venv."""
    return [f"{name}=={package_metadata.version(name)}" for name in PIP_PACKAGES]


def model_signature(image_size: int, class_names: tuple[str, ...]):
    """uint8 faces (-1, S, S, 3) in; one probability column per class and `expression` out."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema, TensorSpec

    from search.pyfunc_model import EXPRESSION_COLUMN

    inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, image_size, image_size, 3))])
    outputs = Schema(
        [ColSpec("double", name) for name in class_names]
        + [ColSpec("string", EXPRESSION_COLUMN)]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def _log_and_register(
    tracker: Tracker, run_id: str, model, image_size: int, name: str, tags: dict[str, Any]
) -> int:
    """Logs `model` as a pyfunc model into the trial's run and registers it; returns the version."""
    class_names = tuple(trainer.class_names_of(model))
    with tempfile.TemporaryDirectory(prefix="fer-promote-") as tmp:
        keras_path = trainer.save_model(model, Path(tmp) / KERAS_FILE)
        trainer_code = _copy_trainer_code(Path(tmp) / "code")
        info = _log_into_run(
            tracker,
            run_id,
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={_keras_artifact_key(): str(keras_path)},
            code_paths=[str(trainer_code)],
            signature=model_signature(image_size, class_names),
            pip_requirements=pip_requirements(),
            metadata={"class_names": list(class_names), "image_size": image_size},
            input_example=_input_example(image_size),
        )
    return _register(tracker.client, name, info, run_id, tags)


def _register(client, name: str, info, run_id: str, tags: dict[str, Any]) -> int:
    """A new version of `name` (created if missing) from a logged model; returns its number.

    The client API rather than `mlflow.register_model`, which prints to stderr.
    """
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    version = client.create_model_version(
        name,
        source=info.model_uri,
        run_id=run_id,
        tags={key: _tag_text(value) for key, value in tags.items()},
        model_id=info.model_id,
    )
    return int(version.version)


def _input_example(image_size: int):
    """One mid-grey face: MLflow stores it as the serving example and, on logging, loads the
    logged model and predicts it (see `_ServingCheck`)."""
    import numpy as np

    return np.full((1, image_size, image_size, 3), 128, dtype=np.uint8)


def _keras_artifact_key() -> str:
    from search.pyfunc_model import KERAS_ARTIFACT

    return KERAS_ARTIFACT


def _copy_trainer_code(folder: Path) -> Path:
    """A clean copy of the trainer package (no caches) to ship inside the model."""
    source = Path(trainer.__file__).parent
    target = folder / source.name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return target


def _log_into_run(tracker: Tracker, run_id: str, **log_model_args: Any):
    """`mlflow.pyfunc.log_model` into an ended run, which ends as it was (status and end time).

    MLflow logs models only into the active run, so the run is reopened; `with start_run` would
    mark the trial's run FAILED if logging failed, which would misreport the trial.
    """
    import mlflow

    try:
        before = tracker.client.get_run(run_id).info
    except Exception as exc:
        raise RegistryError(f"the trial's MLflow run {run_id} cannot be read: {exc}") from None
    mlflow.start_run(run_id=run_id)
    try:
        with _ServingCheck() as check:
            info = mlflow.pyfunc.log_model(name=LOGGED_MODEL_NAME, **log_model_args)
    finally:
        mlflow.end_run()
        tracker.client.set_terminated(run_id, status=before.status, end_time=before.end_time)
    if check.failure:
        try:  # leave no unusable model in the run
            tracker.client.delete_logged_model(info.model_id)
        except Exception:  # the registration is refused either way
            pass
        raise RegistryError(
            f"the logged model cannot load or predict its input example, so it was not "
            f"registered: {check.failure[:500]}"
        )
    return info


class _ServingCheck(logging.Handler):
    """Catches MLflow's serving-input check failing while a model is logged.

    MLflow loads the just-logged model and predicts the input example, but reports a failure
    only as a warning; a model that cannot serve must not become a registered version.
    """

    _LOGGER = "mlflow.models.model"
    _PREFIX = "Failed to validate serving input example"

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.failure = ""

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith(self._PREFIX) and not self.failure:
            self.failure = message.rpartition("Got error: ")[2] or message

    def __enter__(self) -> _ServingCheck:
        logging.getLogger(self._LOGGER).addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger(self._LOGGER).removeHandler(self)


def _tag_text(value: Any) -> str:
    # repr keeps every digit of a float (str would too in Python 3, but be explicit).
    return repr(value) if isinstance(value, float) else str(value)


# --------------------------------------------------------------------------------- the aliases


@dataclass(frozen=True)
class _AliasDecision:
    alias: str
    previous_version: int | None
    previous_score: float | None
    reason: str


def _choose_alias(
    client, name: str, version: int, score_name: str, score: float, *, maximize: bool, force: bool
) -> _AliasDecision:
    champion = _version_by_alias(client, name, CHAMPION)
    if champion is None or int(champion.version) == version:
        return _AliasDecision(CHAMPION, None, None, "no champion yet")
    previous = int(champion.version)
    previous_score = _float_tag(champion.tags, score_name)
    if force:
        return _AliasDecision(CHAMPION, previous, previous_score, "forced")
    if previous_score is None:
        return _AliasDecision(
            CHALLENGER, previous, None,
            f"the champion (version {previous}) has no {score_name} tag to compare with; "
            f"promote with force to replace it",
        )
    better = score > previous_score if maximize else score < previous_score
    relation = "beats" if better else "does not beat"
    return _AliasDecision(
        CHAMPION if better else CHALLENGER, previous, previous_score,
        f"{score_name} {score:.4f} {relation} the champion's (version {previous}) "
        f"{previous_score:.4f}",
    )


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        value = float(tags[key])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _version_by_alias(client, name: str, alias: str):
    aliases = client.get_registered_model(name).aliases
    if alias not in aliases:
        return None
    return client.get_model_version(name, str(aliases[alias]))


# ------------------------------------------------------------------------ references and fetch


def parse_model_ref(ref: str) -> tuple[str, str | None, int | None]:
    """Splits a model reference into (name, alias, version); plain NAME means NAME@champion.

    ``models:/`` in front is accepted and ignored.

    Raises:
        InputError: the reference is not NAME, NAME@ALIAS or NAME/VERSION.
    """
    text = ref.strip().removeprefix("models:/") if isinstance(ref, str) else ""
    name, alias, version = text, None, None
    if "@" in text:
        name, _, alias = text.partition("@")
        valid = bool(_ALIAS.fullmatch(alias))
    elif "/" in text:
        name, _, number = text.partition("/")
        valid = number.isdigit() and int(number) > 0
        version = int(number) if valid else None
    else:
        alias, valid = CHAMPION, True
    if not (valid and _NAME.fullmatch(name)):
        raise InputError(f"model reference: expected {_REF_HELP}, but got {ref!r}")
    return name, alias, version


def models_uri(ref: str) -> str:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` for a model reference."""
    name, alias, version = parse_model_ref(ref)
    return f"models:/{name}/{version}" if version is not None else f"models:/{name}@{alias}"


def resolve_version(client, ref: str, tracking_uri: str = ""):
    """The registered `ModelVersion` a reference points to.

    Raises:
        InputError: bad syntax, or no such model, alias or version (the message lists what
            there is).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    try:
        registered = client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        where = f" in {mask_url(tracking_uri)}" if tracking_uri else ""
        raise InputError(
            f"no registered model named {name!r}{where}; registered models: "
            f"{', '.join(names) or 'none'}"
        ) from None
    if alias is not None:
        if alias not in registered.aliases:
            have = ", ".join(f"{a} (version {v})" for a, v in sorted(registered.aliases.items()))
            raise InputError(
                f"model {name!r} has no alias {alias!r}; its aliases: {have or 'none'}"
                + ("" if have else f" (fetch a version instead: {name}/VERSION)")
            )
        version = int(registered.aliases[alias])
    try:
        return client.get_model_version(name, str(version))
    except MlflowException:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        raise InputError(
            f"model {name!r} has no version {version}; its versions: "
            f"{', '.join(map(str, versions)) or 'none'}"
        ) from None


def fetch(model_ref: str, out_dir: Path | str, *, tracking_uri: str) -> Path:
    """Writes a registered model version into `out_dir`.

    Files: ``model.keras`` (load it with `trainer.load_model`), ``class_names.json`` (label
    index -> expression) and ``metadata.json`` (name, version, aliases, tags, run_id, source,
    image_size, created). They are downloaded into a temporary folder beside them and moved in
    only once all are there, so a failure leaves `out_dir` as it was.

    Args:
        model_ref: NAME, NAME@ALIAS or NAME/VERSION (plain NAME = NAME@champion).
        out_dir: the folder to write into, created if missing; files there are replaced.
        tracking_uri: the MLflow registry.

    Returns:
        `out_dir`.

    Raises:
        InputError: bad reference, unknown model / alias / version, `out_dir` is a file.
        RegistryError: the version's files cannot be downloaded.
    """
    tracker = registry_tracker(tracking_uri)
    version = resolve_version(tracker.client, model_ref, tracking_uri)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out: {out} exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=out))  # same disk: os.replace works
    try:
        info = _download_version(tracker.client, version, staging)
        class_names = info["class_names"]
        description = _describe(tracker.client, version, info["image_size"], model_ref)
        (staging / CLASS_NAMES_FILE).write_text(json.dumps(class_names, indent=2) + "\n")
        (staging / METADATA_FILE).write_text(json.dumps(description, indent=2) + "\n")
        for name in (KERAS_FILE, CLASS_NAMES_FILE, METADATA_FILE):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _download_version(client, version, staging: Path) -> dict[str, Any]:
    """Downloads the version's MLmodel and `.keras` file into `staging`; returns what MLmodel
    says about the model (class names, image size)."""
    import mlflow.artifacts
    import yaml

    base = client.get_model_version_download_uri(version.name, version.version).rstrip("/")
    try:
        mlmodel_path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=str(staging / "download")
        )
        mlmodel = yaml.safe_load(Path(mlmodel_path).read_text())
        keras_rel = _keras_artifact_path(mlmodel)
        keras_local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/{keras_rel}", dst_path=str(staging / "download")
        )
    except InputError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"cannot download {version.name} version {version.version} from {base}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        ) from None
    os.replace(keras_local, staging / KERAS_FILE)
    meta = mlmodel.get("metadata") or {}
    class_names = meta.get("class_names") or list(trainer.CLASS_NAMES)
    image_size = meta.get("image_size") or _int_or_none(version.tags.get("image_size"))
    return {"class_names": list(class_names), "image_size": image_size}


def _keras_artifact_path(mlmodel: dict[str, Any]) -> str:
    from search.pyfunc_model import KERAS_ARTIFACT

    artifacts = (mlmodel.get("flavors", {}).get("python_function", {}) or {}).get("artifacts", {})
    entry = artifacts.get(KERAS_ARTIFACT)
    if not entry or "path" not in entry:
        raise InputError("this model version was not registered by fer-search (no .keras artifact)")
    return entry["path"]


def _describe(client, version, image_size: int | None, ref: str) -> dict[str, Any]:
    registered = client.get_registered_model(version.name).aliases
    aliases = sorted(a for a, v in registered.items() if str(v) == str(version.version))
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC)
    return {
        "name": version.name,
        "version": int(version.version),
        "aliases": aliases,
        "reference": ref,
        "model_uri": f"models:/{version.name}/{version.version}",
        "run_id": version.run_id,
        "source": version.source,
        "image_size": image_size,
        "created": created.isoformat(timespec="seconds"),
        "tags": dict(sorted(version.tags.items())),
    }


def _int_or_none(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
