"""The MLflow model registry, read side: model references, resolving them, fetching a version.

Model references are ``NAME`` (= ``NAME@champion``), ``NAME@ALIAS`` or ``NAME/VERSION``.
`fetch` writes a registered version's `.keras` file and a description of it into a folder;
`download_version` is the one reader of a version's files, which `fetch`, `predict` and `serve`
share: it reads the version's ``MLmodel`` (as YAML data) and its ``.keras`` file, nothing else,
and refuses an artifact path in ``MLmodel`` that would leave the model's folder (``..``, an
absolute path, a URI), as a tampered store could write one.

This module needs no Optuna (serving and fetching hosts need only MLflow and the trainer).
The write side lives beside it:

- `promotion`: promote a study's best trial (reads the Optuna study; imports Optuna);
- `registration`: log the pyfunc model into the trial's run and register a version;
- `aliases`: where `champion` / `challenger` go, and the recorded history of moves;
- `loading`: a registered version in memory, through installed code only (stored code opt-in);
- `serve`: a registered version behind a small HTTP server that refuses what would sink it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

import trainer
from search.contracts import CHAMPION_ALIAS, MODEL_NAME_PATTERN
from search.errors import InputError, SearchError
from search.tracking.runs import Tracker
from search.urls import mask_url

# MLflow (and search.registry.pyfunc_model, which imports it) is imported where first used:
# `run` and `worker` import this module (search.cli.study_commands imports promotion for `run
# --promote`), and read the spec and check both stores before MLflow's import (~2.3 s here).

CHALLENGER = "challenger"
KERAS_FILE = "model.keras"
CLASS_NAMES_FILE = "class_names.json"
METADATA_FILE = "metadata.json"
_NAME = MODEL_NAME_PATTERN
_ALIAS = re.compile(r"[A-Za-z0-9_-]+")
_REF_HELP = "NAME, NAME@ALIAS or NAME/VERSION (e.g. expw-vgg16@champion or expw-vgg16/3)"
# A path inside a model's folder as MLflow writes one: relative, '/'-separated names that do not
# start with a dot (so no '..' and no '.'), no drive, scheme, backslash or percent-escape.
_INSIDE_PATH = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9_.+-]*/)*[A-Za-z0-9_][A-Za-z0-9_.+-]*")

class RegistryError(SearchError):
    """Promotion or fetching failed for a reason other than bad input (CLI exit code 1)."""


def registry_tracker(tracking_uri: str) -> Tracker:
    """A `Tracker` on the store, with MLflow's download progress bars off (they would garble
    the CLI's output; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true brings them back) and its
    INFO chatter too: importing mlflow resets its logger to INFO after Tracker quietens it."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    tracker = Tracker(tracking_uri)
    logging.getLogger("mlflow").setLevel(logging.WARNING)
    return tracker


def check_model_name(name: str) -> str:
    """`name` if it can be a registered model name in a ``models:/`` reference."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InputError(
            f"model name: expected letters, digits, '_', '.' and '-', starting with a letter or "
            f"digit, but got {name!r}"
        )
    return name


def registered_model(client, name: str, tracking_uri: str = ""):
    """The `RegisteredModel` named `name`, or an `InputError` listing the registered models."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(name)
    except MlflowException:
        names = sorted(m.name for m in client.search_registered_models(max_results=1000))
        where = f" in {mask_url(tracking_uri)}" if tracking_uri else ""
        raise InputError(
            f"no registered model named {name!r}{where}; registered models: "
            f"{', '.join(names) or 'none'}"
        ) from None


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
        alias, valid = CHAMPION_ALIAS, True
    if not (valid and _NAME.fullmatch(name)):
        raise InputError(f"model reference: expected {_REF_HELP}, but got {ref!r}")
    return name, alias, version


def resolve_version(client, ref: str, tracking_uri: str = ""):
    """The registered `ModelVersion` a reference points to.

    Raises:
        InputError: bad syntax, or no such model, alias or version (the message lists what
            there is).
    """
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_ref(ref)
    registered = registered_model(client, name, tracking_uri)
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
        info = download_version(tracker.client, version, staging)
        class_names = info["class_names"]
        description = _describe(tracker.client, version, info["image_size"], model_ref)
        (staging / CLASS_NAMES_FILE).write_text(json.dumps(class_names, indent=2) + "\n")
        (staging / METADATA_FILE).write_text(json.dumps(description, indent=2) + "\n")
        for name in (KERAS_FILE, CLASS_NAMES_FILE, METADATA_FILE):
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def download_version(client, version, staging: Path) -> dict[str, Any]:
    """Downloads the version's MLmodel and `.keras` file into `staging` (the `.keras` file as
    ``staging/model.keras``); returns what MLmodel says about the model (class names, image
    size). Nothing stored with the model is run: MLmodel is read as YAML data.

    Raises:
        InputError: MLmodel names no `.keras` artifact, or a path that leaves the model's folder.
        RegistryError: a download failed.
    """
    import mlflow.artifacts
    base = client.get_model_version_download_uri(version.name, version.version).rstrip("/")
    try:
        mlmodel_path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/MLmodel", dst_path=str(staging / "download")
        )
        mlmodel = yaml.safe_load(Path(mlmodel_path).read_text())
        keras_rel = _keras_artifact_path(mlmodel, f"{version.name} version {version.version}")
        keras_local = mlflow.artifacts.download_artifacts(
            artifact_uri=f"{base}/{keras_rel}", dst_path=str(staging / "download")
        )
    except InputError:
        raise
    except Exception as exc:
        raise RegistryError(
            f"cannot download {version.name} version {version.version} from {base}: "
            f"{type(exc).__name__}: {' '.join(str(exc).split())[:600]}"  # the cause included
        ) from None
    os.replace(keras_local, staging / KERAS_FILE)
    meta = mlmodel.get("metadata") or {}
    class_names = meta.get("class_names") or list(trainer.CLASS_NAMES)
    image_size = meta.get("image_size") or _int_or_none(version.tags.get("image_size"))
    return {"class_names": list(class_names), "image_size": image_size}


def _keras_artifact_path(mlmodel: Any, what: str) -> str:
    from search.registry.pyfunc_model import KERAS_ARTIFACT

    flavors = mlmodel.get("flavors") if isinstance(mlmodel, dict) else None
    pyfunc = flavors.get("python_function") if isinstance(flavors, dict) else None
    artifacts = pyfunc.get("artifacts") if isinstance(pyfunc, dict) else None
    entry = artifacts.get(KERAS_ARTIFACT) if isinstance(artifacts, dict) else None
    if not isinstance(entry, dict) or "path" not in entry:
        raise InputError(f"{what} was not registered by fer-search (no .keras artifact)")
    return check_inside_path(entry["path"], f"{what}: its MLmodel's .keras artifact path")


def check_inside_path(path: Any, what: str) -> str:
    """`path` (read from a model's MLmodel) if it names a file inside the model's folder.

    Raises:
        InputError: `path` is absolute, a URI, or climbs out with ``..`` (or is not a plain
            relative path at all): a tampered MLmodel, never one MLflow wrote.
    """
    text = path if isinstance(path, str) else ""
    if not _INSIDE_PATH.fullmatch(text):
        raise InputError(
            f"{what}: expected a relative path inside the model's folder, but got "
            f"{str(path)[:200]!r}; refusing to read it (the stored MLmodel was changed after "
            f"MLflow wrote it)"
        )
    return text


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
