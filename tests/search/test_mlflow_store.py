"""A fresh local MLflow store is made from a pre-migrated template, once, under a lock."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from search import settings
from search.tracking import local_store as mlflow_store
from search.tracking.local_store import ensure_sqlite_store, sqlite_path

ROOT = Path(__file__).resolve().parents[2]

# Each process creates the store (if missing), then uses it: an experiment and a run.
_WORKER = """
import sys
from search.tracking.runs import Tracker
t = Tracker(sys.argv[1])
exp = t.experiment_id("race")
run = t.client.create_run(exp)
t.log(run.info.run_id, metrics={"x": 1.0})
print("ok")
"""


@pytest.fixture(autouse=True)
def template_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    folder = tmp_path / "templates"
    monkeypatch.chdir(tmp_path)
    with settings.override(FER_SEARCH_MLFLOW_TEMPLATE_DIR=folder):
        yield folder


def _start(uri: str, env_dir: Path) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "FER_SEARCH_MLFLOW_TEMPLATE_DIR": str(env_dir),
           "MLFLOW_DISABLE_TELEMETRY": "true", "PATH": "/usr/bin:/bin",
           "HOME": str(env_dir.parent)}
    return subprocess.Popen([sys.executable, "-c", _WORKER, uri], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("template_ready", [False, True], ids=["no-template", "template"])
def test_two_processes_creating_the_store_at_once_both_succeed(
    tmp_path: Path, template_dir: Path, template_ready: bool
) -> None:
    if template_ready:
        ensure_sqlite_store(f"sqlite:///{tmp_path / 'warm' / 'mlflow.db'}")
        assert mlflow_store.template_path().is_file()
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    procs = [_start(uri, template_dir) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results, strict=True):
        assert proc.returncode == 0, stderr
        assert stdout.strip() == "ok"
    import mlflow

    client = mlflow.MlflowClient(uri)
    experiment = client.get_experiment_by_name("race")
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert not list((tmp_path / "mlruns").glob(".mlflow.db.*"))  # no temp left behind


def test_a_template_made_store_works_with_mlflow(tmp_path: Path) -> None:
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert ensure_sqlite_store(uri) is True
    assert ensure_sqlite_store(uri) is False  # exists now: left alone
    client = mlflow.MlflowClient(uri, registry_uri=uri)
    default = client.get_experiment("0")
    # Where MLflow itself puts the Default experiment of a store opened from this folder.
    assert default.artifact_location.rstrip("/").endswith(str(tmp_path / "mlruns" / "0"))
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    run = client.create_run(exp)
    client.log_metric(run.info.run_id, "val_accuracy", 0.5)
    client.log_param(run.info.run_id, "learning_rate", "0.001")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("m")
    version = client.create_model_version("m", f"runs:/{run.info.run_id}/model",
                                          run_id=run.info.run_id)
    client.set_registered_model_alias("m", "champion", version.version)
    assert client.get_model_version_by_alias("m", "champion").version == version.version
    assert client.get_run(run.info.run_id).data.metrics == {"val_accuracy": 0.5}


def test_without_a_writable_template_folder_the_store_is_still_made(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    uri = f"sqlite:///{tmp_path / 'db' / 'mlflow.db'}"
    with settings.override(FER_SEARCH_MLFLOW_TEMPLATE_DIR=blocker / "sub"):  # cannot exist
        assert ensure_sqlite_store(uri) is True
    import mlflow

    assert mlflow.MlflowClient(uri).get_experiment("0").name == "Default"


def test_only_local_sqlite_files_are_handled() -> None:
    assert sqlite_path("http://127.0.0.1:5000") is None
    assert sqlite_path("sqlite:///:memory:") is None
    assert sqlite_path("sqlite:////abs/m.db?timeout=5") == Path("/abs/m.db")
    assert ensure_sqlite_store("postgresql://u:p@h/db") is False
