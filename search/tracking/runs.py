"""MLflow side of a study: one parent run per study, one nested run per trial.

Everything goes through an explicit `MlflowClient` (no fluent active-run state), so a worker's
runs never leak into another's, and a run's final status is always set: FINISHED for a complete
trial, KILLED for a pruned or interrupted one, FAILED with the reason as a tag for a failed one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from search.errors import InputError
from search.tracking.local_store import ensure_sqlite_store

# MLflow is imported where first used (`Tracker`): `run` and `worker` import this module, and read
# the spec and check both stores before paying for MLflow's import (~2.3 s here); MLflow also
# reads its logging settings (`_prepare_mlflow_env`) when it is imported.

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_ARTIFACT_ROOT = Path("mlruns/artifacts")
_BATCH = 900  # MLflow accepts at most 1000 metrics per log_batch call
WEIGHTS_ARTIFACT = "trained/top_weights.npz"


def seed_weights_artifact(seed: int) -> str:
    """Where a repeats trial keeps one seed's weights (search.trial.repeats); its
    `WEIGHTS_ARTIFACT` holds its representative seed's."""
    return f"trained/seed-{seed}/top_weights.npz"


NOTE_TAG = "mlflow.note.content"  # the run's description in the MLflow UI (Markdown)
# A trial's bookkeeping: tags, not metrics, so the UI's charts show only learning curves.
BOOKKEEPING = ("best_epoch", "epochs_run", "epochs_trained", "feature_seconds", "duration_s")
ANSWERED_TAG = "answered_from_record"
# MLflow's dataset table holds a digest of at most 36 characters (enforced by PostgreSQL).
DIGEST_CHARS = 32
DATASET_NAME = "expw"


def resolve_tracking_uri(flag: str | None, spec_value: str | None) -> str:
    """The tracking URI in force: --tracking-uri, then $MLFLOW_TRACKING_URI, then the spec, then
    the embedded SQLite store."""
    return flag or os.environ.get("MLFLOW_TRACKING_URI") or spec_value or DEFAULT_TRACKING_URI


def experiment_runs_path(experiment_id: str) -> str:
    """The UI's route to an experiment's runs (after the `#`; a run's page is `/<run id>`)."""
    return f"/experiments/{experiment_id}/runs"


ML_VIEW = "workflowType=machine_learning"


def runs_url(base_url: str, experiment_id: str) -> str:
    """The MLflow UI's page of an experiment's runs, in the model-training view: MLflow 3 opens
    experiments in its GenAI view (traces) unless the URL names the workflow type."""
    return f"{base_url.rstrip('/')}/#{experiment_runs_path(experiment_id)}?{ML_VIEW}"


def pick_experiment(client, study: str | None):
    """The experiment of `study`, or when None the most recently updated study's one.

    Returns:
        The experiment, or None when no study has runs here yet.

    Raises:
        InputError: `study` names no experiment here (the message lists those that exist).
    """
    found = client.search_experiments(order_by=["last_update_time DESC"])
    studies = [e for e in found if e.name != "Default"]
    if study is None:
        return studies[0] if studies else None
    for experiment in studies:
        if experiment.name == study:
            return experiment
    raise InputError(f"--study: no experiment named {study!r} in the tracking store; there: "
                     f"{', '.join(e.name for e in studies) or 'none'}")


def _prepare_mlflow_env() -> None:

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # "Creating initial MLflow database tables..." and friends: not the user's business. MLflow
    # configures its logger when imported, from this variable.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    # "View run ... at http://..." after every run closed on a tracking server.
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    _quiet_mlflow_loggers()


def _quiet_mlflow_loggers() -> None:
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)


class Tracker:
    """Writes a study's runs to one MLflow tracking server or store."""

    def __init__(self, tracking_uri: str) -> None:
        _prepare_mlflow_env()
        import mlflow
        from mlflow import MlflowClient

        _quiet_mlflow_loggers()  # importing mlflow reset them
        self.uri = tracking_uri
        ensure_sqlite_store(tracking_uri)  # a new local store: from a template, under a lock
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    # ----------------------------------------------------------------------------- experiments

    def experiment_id(self, name: str) -> str:
        """The experiment named after the study, created on first use. With a local store its
        artifacts go under mlruns/artifacts/<name>; a tracking server chooses its own place."""
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        location = None
        if not self.uri.startswith(("http://", "https://", "databricks")):
            location = (DEFAULT_ARTIFACT_ROOT / name).resolve().as_uri()
        try:
            return self.client.create_experiment(name, artifact_location=location)
        except Exception:  # another worker created it first
            found = self.client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id

    # ------------------------------------------------------------------------------- the study

    def open_study_run(
        self,
        experiment_id: str,
        existing_run_id: str | None,
        study_name: str,
        params: Mapping[str, Any],
        spec_text: str,
    ) -> str:
        """Reopens the study's parent run (a resumed study) or creates it; returns its id."""
        if existing_run_id:
            try:
                self.client.get_run(existing_run_id)
                self.client.update_run(existing_run_id, status="RUNNING")
                return existing_run_id
            except Exception:  # deleted in the UI: start a new parent
                pass
        run = self.client.create_run(
            experiment_id,
            run_name=study_name,
            tags={"optuna.study_name": study_name, "fer_search.kind": "study"},
        )
        run_id = run.info.run_id
        self.log(run_id, params=params)
        self.client.log_text(run_id, spec_text, "spec/" + "study.yaml")
        return run_id

    def close_study_run(self, run_id: str, status: str, metrics: Mapping[str, float]) -> None:
        self.log(run_id, metrics=metrics)
        self.client.set_terminated(run_id, status=status)

    # ------------------------------------------------------------------------------- the trials

    def start_trial_run(
        self,
        experiment_id: str,
        parent_run_id: str,
        study_name: str,
        trial_number: int,
        params: Mapping[str, Any],
        tags: Mapping[str, str],
    ) -> str:
        run = self.client.create_run(
            experiment_id,
            run_name=f"trial-{trial_number}",
            tags={
                "mlflow.parentRunId": parent_run_id,
                "optuna.study_name": study_name,
                "optuna.trial_number": str(trial_number),
                "fer_search.kind": "trial",
                **tags,
            },
        )
        self.log(run.info.run_id, params=params)
        return run.info.run_id

    def log(
        self,
        run_id: str,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, float] | None = None,
        history: Iterable[Mapping[str, float]] = (),
        tags: Mapping[str, str] | None = None,
        step: int = 0,
        model_id: str | None = None,
        dataset: tuple[str, str] | None = None,
    ) -> None:
        """Params, metrics (at `step`), per-epoch metrics (step = epoch) and tags, in few round
        trips. With `model_id`, `metrics` are also the logged model's, linked to `dataset` (its
        `dataset_key`) if given: the model's page lists the datasets of its metrics as
        "Datasets used" (a run's own metrics keep no dataset)."""
        from mlflow.entities import Metric, Param, RunTag

        now = int(time.time() * 1000)
        metric_rows = [
            Metric(key, float(value), now, int(row["epoch"]))
            for row in history
            for key, value in row.items()
            if key != "epoch"
        ]
        linked = {"model_id": model_id}
        if dataset is not None:
            linked.update(dataset_name=dataset[0], dataset_digest=dataset[1])
        metric_rows += [Metric(k, float(v), now, step, **linked)
                        for k, v in (metrics or {}).items()]
        param_rows = [Param(k, _param_text(v)) for k, v in (params or {}).items()]
        tag_rows = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
        first = True
        while first or metric_rows:
            chunk, metric_rows = metric_rows[:_BATCH], metric_rows[_BATCH:]
            self.client.log_batch(
                run_id,
                metrics=chunk,
                params=param_rows if first else [],
                tags=tag_rows if first else [],
            )
            first = False

    def log_evaluation(self, run_id: str, evaluation, prefix: str) -> None:
        """The confusion matrix (JSON + PNG) and per-class report of one split."""
        self.client.log_dict(run_id, evaluation.to_dict(), f"{prefix}/evaluation.json")
        png = confusion_png(evaluation.confusion, evaluation.class_names, prefix)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "confusion_matrix.png"
            path.write_bytes(png)
            self.client.log_artifact(run_id, str(path), prefix)

    def log_top_weights(self, run_id: str, weights: list[np.ndarray],
                        artifact: str = WEIGHTS_ARTIFACT) -> None:
        """The trained part's weights (a head is small): what `promote` rebuilds the model from."""
        buffer = io.BytesIO()
        np.savez(buffer, *weights)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / Path(artifact).name
            path.write_bytes(buffer.getvalue())
            self.client.log_artifact(run_id, str(path), str(Path(artifact).parent))

    def load_top_weights(self, run_id: str,
                         artifact: str = WEIGHTS_ARTIFACT) -> list[np.ndarray]:
        with tempfile.TemporaryDirectory() as tmp:
            local = self.client.download_artifacts(run_id, artifact, tmp)
            with np.load(local) as archive:
                return [archive[f"arr_{i}"] for i in range(len(archive.files))]

    def log_dataset(self, run_id: str, dataset, source: str, context: str) -> None:
        """The dataset as an MLflow dataset input (the runs table's "Dataset" column): digest =
        the data fingerprint (its first 32 characters; the whole one is in the profile), the
        source folder, and the faces per split in the profile."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        self.client.log_inputs(run_id, datasets=[DatasetInput(
            Dataset(**dataset_entity_fields(dataset, source)),
            tags=[InputTag(MLFLOW_DATASET_CONTEXT, context)],
        )])

    def end_run(self, run_id: str, status: str, reason: str | None = None) -> None:
        """Ends the run; a run that did not finish says why in its `fail_reason` tag and its
        description (what the MLflow UI shows first)."""
        if reason:
            self.client.set_tag(run_id, "fail_reason", reason[:4000])
            if status != "FINISHED":
                self.client.set_tag(run_id, NOTE_TAG, f"**{status}**: {reason[:4000]}")
        self.client.set_terminated(run_id, status=status)


def dataset_key(dataset) -> tuple[str, str]:
    """The name and digest MLflow knows `dataset` (a trainer.Dataset) by: one dataset per data
    and image size; its splits are the inputs' contexts."""
    return f"{DATASET_NAME}-{dataset.image_size}px", dataset.fingerprint[:DIGEST_CHARS]


def dataset_entity_fields(dataset, source: str) -> dict[str, str]:
    """Name, digest, source and profile of `dataset` (a trainer.Dataset) for MLflow."""
    report = getattr(dataset, "report", None)
    splits = {name: int(len(dataset.split(name).labels)) for name in ("train", "val", "test")}
    profile = {
        "fingerprint": dataset.fingerprint,
        "image_size": dataset.image_size,
        "faces": report.faces if report is not None else sum(splits.values()),
        "split_sizes": splits,
    }
    uri = Path(source).resolve().as_uri() if "://" not in source else source
    name, digest = dataset_key(dataset)
    return {
        "name": name,
        "digest": digest,
        "source_type": "local",
        "source": json.dumps({"uri": uri}),
        "schema": json.dumps({"features": f"uint8 (n, {dataset.image_size}, "
                              f"{dataset.image_size}, 3) RGB faces",
                              "targets": "int label 0..6 (angry .. neutral)"}),
        "profile": json.dumps(profile),
    }


def trial_tags(
    result, duration_s: float, metric: str, params: Mapping[str, Any]
) -> dict[str, str]:
    """A finished trial's bookkeeping and one-line description, as run tags.

    Args:
        result: the trainer's TrainResult.
        duration_s: the trial's wall time, logging included.
        metric: the study's metric (its value opens the description).
        params: the searched params and their values.
    """
    answered = result.epochs_trained == 0
    tags = {
        "best_epoch": result.best_epoch,
        "epochs_run": result.epochs_run,
        "epochs_trained": result.epochs_trained,
        "feature_seconds": f"{result.feature_seconds:.3f}",
        "duration_s": f"{duration_s:.3f}",
        ANSWERED_TAG: str(answered).lower(),
    }
    searched = ", ".join(f"{k}={_param_text(v)}" for k, v in params.items())
    how = ("answered from its group's training record (0 epochs trained)" if answered
           else f"{result.epochs_trained} epochs trained")
    tags[NOTE_TAG] = (f"{metric} {result.metrics[metric]:.4f} at epoch {result.best_epoch} of "
                      f"{result.epochs_run}; {searched}; {how}.")
    return {key: str(value) for key, value in tags.items()}


def _param_text(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
    return text[:6000]


def confusion_png(confusion: list[list[int]], class_names: tuple[str, ...], title: str) -> bytes:
    """A labelled confusion-matrix heat map as PNG bytes (rows: true class, columns: predicted).

    Drawn with Pillow rather than matplotlib: a figure cost ~150 ms a trial here, more than the
    rest of a trial's logging together; this costs a few milliseconds.
    """
    matrix = np.asarray(confusion)
    n = len(class_names)
    cell, left, top = 54, 78, 44
    font = ImageFont.load_default(size=12)
    image = Image.new("RGB", (left + n * cell + 10, top + n * cell + 40), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 6), f"confusion matrix ({title}): rows true, columns predicted",
              fill="black", font=font)
    peak = max(int(matrix.max()), 1) if matrix.size else 1
    for row in range(n):
        draw.text((4, top + row * cell + cell // 2 - 6), class_names[row], fill="black", font=font)
        for col in range(n):
            count = int(matrix[row, col])
            shade = int(255 - 200 * count / peak)
            x, y = left + col * cell, top + row * cell
            draw.rectangle([x, y, x + cell - 1, y + cell - 1], fill=(shade, shade, 255),
                           outline="white")
            colour = "white" if count > peak / 2 else "black"
            draw.text((x + cell // 2, y + cell // 2), str(count), fill=colour, font=font,
                      anchor="mm")
    for col, name in enumerate(class_names):
        draw.text((left + col * cell + cell // 2, top + n * cell + 8), name[:8], fill="black",
                  font=font, anchor="mt")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
