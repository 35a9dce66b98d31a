"""Logging a rebuilt model into its trial's MLflow run and registering it as a model version.

The model is an MLflow pyfunc "model from code" (`search/registry/pyfunc_model.py`) carrying
the `.keras` file and a copy of `trainer/`, so that `mlflow.pyfunc.load_model` works with nothing
but the pinned requirements. fer-search's own `predict`, `serve` and `fetch` never run that stored
code: they read the `.keras` file (safe mode) and MLmodel's data (`search.registry.loading`).
It is logged into the trial's run under the name
``<study>-trial-<n>``, registered, and linked back the way `mlflow.register_model` links it (the
logged model's ``mlflow.modelVersions`` tag), so its page in the UI shows the version rather
than "Not registered". Each version carries a Markdown description (what it is, how it scored)
and tags (every TrainConfig field, the scores, the data fingerprint) that later promotions
compare against.

Needs MLflow and the trainer, not Optuna. See ARCHITECTURE.md, "the registry flow".
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata as package_metadata
from pathlib import Path
from typing import Any

import numpy as np

import trainer
from search.registry.refs import KERAS_FILE, RegistryError
from search.tracking.runs import NOTE_TAG, Tracker

# MLflow (and search.registry.pyfunc_model, which imports it) is imported where first used:
# `run` and `worker` import this module (search.cli.study_commands imports promotion for `run
# --promote`), and read the spec and check both stores before MLflow's import (~2.3 s here).

# Pinned from the running environment: MLflow would otherwise infer them by importing the model
# (about 7 s here) and might miss what the shipped trainer code needs.
PIP_PACKAGES = ("tensorflow", "keras", "h5py", "numpy", "pillow", "pandas", "mlflow")
# The same tag MLflow's `register_model` sets on a logged model; the UI reads it.
MODEL_VERSIONS_TAG = "mlflow.modelVersions"
CONFUSION_PNG = "test/confusion_matrix.png"
# What a logged model's name may not contain (mlflow.utils.validation).
_LOGGED_NAME_BAD = re.compile(r"[/:.%\"']")


def logged_model_name(study: str, trial_number: int) -> str:
    """``<study>-trial-<n>``; characters MLflow refuses in a logged model's name become '_'."""
    return _LOGGED_NAME_BAD.sub("_", f"{study}-trial-{trial_number}")


def version_of_run(client, name: str, run_id: str):
    """The version of `name` already registered from the trial run `run_id`, or None.

    A trial is registered at most once per model name: a second promotion reuses its version.
    """
    found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(found, key=lambda v: int(v.version)) if found else None


@dataclass(frozen=True)
class Source:
    """Where a version comes from: the study, its trial and their runs, the data it was trained
    and tested on (MLflow's dataset name and digest, `search.tracking.runs.dataset_key`)."""

    study: str
    trial_number: int
    run_id: str
    experiment_id: str
    study_run_id: str | None
    dataset: tuple[str, str]

    def run_link(self, run_id: str) -> str:
        """A run's page, relative to the MLflow UI's root (the UI resolves it)."""
        return f"#/experiments/{self.experiment_id}/runs/{run_id}"


def log_and_register(
    tracker: Tracker,
    run_id: str,
    model,
    *,
    name: str,
    source: Source,
    image_size: int,
    tags: Mapping[str, Any],
    description: str,
    test_metrics: Mapping[str, float],
):
    """Logs `model` as a pyfunc model into the trial's run, its test metrics into both (linked to
    the data they were measured on), gives the logged model its description, and registers it;
    returns the `ModelVersion`."""
    class_names = tuple(trainer.class_names_of(model))
    with tempfile.TemporaryDirectory(prefix="fer-promote-") as tmp:
        keras_path = trainer.save_model(model, Path(tmp) / KERAS_FILE)
        trainer_code = _copy_trainer_code(Path(tmp) / "code")
        info = _log_into_run(
            tracker,
            run_id,
            name=logged_model_name(source.study, source.trial_number),
            python_model=str(Path(__file__).with_name("pyfunc_model.py")),
            artifacts={_keras_artifact_key(): str(keras_path)},
            code_paths=[str(trainer_code)],
            signature=model_signature(class_names),
            pip_requirements=pip_requirements(),
            metadata={
                "class_names": list(class_names),
                "image_size": image_size,
                "input": f"RGB faces (N, {image_size}, {image_size}, 3), uint8 or float32 "
                "in 0..255",
            },
            input_example=_input_example(image_size),
        )
    # After logging the model, not before: MLflow copies a run's step-0 metrics to the model it
    # logs, without their dataset (a run's metrics keep none).
    tracker.log(run_id, metrics=test_metrics, model_id=info.model_id, dataset=source.dataset)
    tracker.client.set_logged_model_tags(
        info.model_id, {NOTE_TAG: logged_model_description(source, name, image_size)})
    return register(tracker.client, name, info, run_id, tags, description)


def register(client, name: str, info, run_id: str, tags: Mapping[str, Any], description: str):
    """A new version of `name` (created if missing) from a logged model, linked both ways.

    What `mlflow.register_model` does, through the client (which prints nothing to stderr).
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
        tags={key: tag_text(value) for key, value in tags.items()},
        description=description,
        model_id=info.model_id,
    )
    link_logged_model(client, info.model_id, version)
    return version


def link_logged_model(client, model_id: str, version) -> None:
    """Appends the version to the logged model's ``mlflow.modelVersions`` tag, exactly as
    `mlflow.tracking._model_registry.fluent._register_model` (MLflow 3.17) does."""
    entry = [{"name": version.name, "version": version.version}]
    existing = client.get_logged_model(model_id).tags.get(MODEL_VERSIONS_TAG)
    value = json.loads(existing) + entry if existing else entry
    client.set_logged_model_tags(model_id, {MODEL_VERSIONS_TAG: json.dumps(value)})


def pip_requirements() -> list[str]:
    """``package==version`` for what loading the pyfunc model needs, read from this venv."""
    return [f"{name}=={package_metadata.version(name)}" for name in PIP_PACKAGES]


def model_signature(class_names: tuple[str, ...]):
    """Outputs only: one probability column per class and `expression`.

    No input schema, on purpose: MLflow enforces a tensor input's dtype exactly (uint8 refuses
    float32 and the reverse), and faces come as both. The model checks its input itself
    (`pyfunc_model.as_batch`: shape (N, S, S, 3), numbers in 0..255); the size is in the
    model's metadata (``image_size``). Over HTTP, JSON numbers reach it as int or float arrays.
    """
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    from search.registry.pyfunc_model import EXPRESSION_COLUMN

    outputs = Schema(
        [ColSpec("double", name) for name in class_names]
        + [ColSpec("string", EXPRESSION_COLUMN)]
    )
    return ModelSignature(inputs=None, outputs=outputs)


def logged_model_description(source: Source, name: str, image_size: int) -> str:
    """The logged model's Markdown page: what it is, what it learnt from, how to load it and
    what each way of loading trusts."""
    dataset, digest = source.dataset
    return "\n".join([
        f"Facial-expression classifier (ExpW's seven classes): VGG16 and the head trained in "
        f"trial **{source.trial_number}** of study **{source.study}**, on RGB faces of "
        f"{image_size}x{image_size} px.",
        "",
        f"- **Data**: `{dataset}` (digest `{digest}`), trained on its train split, chosen on "
        f"its validation split, scored on its test split (the test metrics on this page).",
        f"- **Trial run**: [{source.run_id}]({source.run_link(source.run_id)})"
        + (f"; **study run**: [{source.study}]({source.run_link(source.study_run_id)})"
           if source.study_run_id else ""),
        f"- **Registered as** `{name}`: `fer-search fetch {name}@champion --out DIR`, "
        f"`fer-search predict --model {name}@champion FACE.jpg`, "
        f"`fer-search serve {name}@champion` load `model.keras` in Keras' safe mode with "
        f"fer-search's installed code.",
        "- `mlflow.pyfunc.load_model(...)` also works, and runs the Python code stored with "
        "this model: load it only from a tracking server whose writers you trust.",
    ])


def version_description(
    source: Source,
    *,
    params: Mapping[str, Any],
    val: trainer.Evaluation,
    test: trainer.Evaluation,
    fingerprint: str,
    metric: str,
) -> str:
    """The version's Markdown page: where it came from and how it scored."""
    run_id = source.run_id
    run = source.run_link(run_id)
    study = (f"[{source.study}]({source.run_link(source.study_run_id)})"
             if source.study_run_id else source.study)
    lines = [
        f"Trial **{source.trial_number}** of study **{study}** (optimising `{metric}`), "
        f"rebuilt from the trial's run [{run_id}]({run}) and scored on the test split.",
        "",
        "| split | accuracy | macro-F1 | loss |",
        "|---|---|---|---|",
        *(f"| {label} | {e.accuracy:.4f} | {e.macro_f1:.4f} | {e.loss:.4f} |"
          for label, e in (("validation", val), ("test", test))),
        "",
        "**Per-class recall (test)**",
        "",
        "| class | recall | support |",
        "|---|---|---|",
        *(f"| {cls} | {float(row.get('recall', 0.0)):.3f} | {int(row.get('support', 0))} |"
          for cls, row in test.per_class.items()),
        "",
        "**Parameters**",
        "",
        "| param | value |",
        "|---|---|",
        *(f"| {key} | `{value}` |" for key, value in params.items()),
        "",
        f"**Data fingerprint**: `{fingerprint}`",
        "",
        f"**Confusion matrix (test)**: [{CONFUSION_PNG}]({run}/artifacts/{CONFUSION_PNG}) "
        f"in the trial's run",
        "",
        f"![confusion matrix](get-artifact?path={CONFUSION_PNG.replace('/', '%2F')}"
        f"&run_uuid={run_id})",
    ]
    return "\n".join(lines)


def model_description(name: str, champion: Any | None) -> str:
    """The registered model's Markdown page: what it is, how to use it, who is champion."""
    now = "no champion yet"
    if champion is not None:
        tags = champion.tags
        now = (f"version {champion.version} (study {tags.get('study', '?')}, trial "
               f"{tags.get('trial_number', '?')}, test_accuracy {tags.get('test_accuracy', '?')})")
    return "\n".join([
        "Facial-expression classifier for ExpW's seven classes: VGG16 + a trained head, "
        "registered by fer-search from the best trial of a study.",
        "",
        "- **Input**: RGB faces `(N, S, S, 3)`, uint8 or float32 in 0..255 "
        "(S: the version's `image_size` tag).",
        "- **Output**: one probability column per class (summing to 1) and `expression`.",
        "- **Aliases**: `champion` is the version with the best test score; `challenger` the "
        "latest promoted version that did not beat it.",
        f"- **Champion now**: {now}.",
        "",
        f"Load: `mlflow.pyfunc.load_model('models:/{name}@champion')`; serve: "
        f"`fer-search serve {name}@champion`; alias moves: `fer-search history {name}`.",
    ])


def tag_text(value: Any) -> str:
    # repr keeps every digit of a float (str would too in Python 3, but be explicit).
    return repr(value) if isinstance(value, float) else str(value)


def _input_example(image_size: int):
    """One mid-grey face: MLflow stores it as the serving example and, on logging, loads the
    logged model and predicts it (see `_ServingCheck`)."""
    return np.full((1, image_size, image_size, 3), 128, dtype=np.uint8)


def _keras_artifact_key() -> str:
    from search.registry.pyfunc_model import KERAS_ARTIFACT

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
            info = mlflow.pyfunc.log_model(**log_model_args)
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
