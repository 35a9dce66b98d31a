"""A password in the storage URL is shown nowhere: not in MLflow, Optuna's attributes, the CLI's
output, the workers' output or any log; only masked (`***`).

The run uses the throwaway PostgreSQL cluster (whose password is random and distinctive) and a
real MLflow server; the password is given every way a user would: in the spec, on the command
line and in the environment of `run --workers 2`, and in URLs that fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from tests.search.studyhelp import stores_fixture, write_spec  # noqa: F401 (fixture)

pytestmark = pytest.mark.postgres

SPACE = {"learning_rate": [3.0e-3, 1.0e-2], "batch_size": [32], "epochs": [2],
         "head_width": [16]}


def _cli(folder: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    base = {k: v for k, v in os.environ.items()
            if k not in ("FER_SEARCH_STORAGE", "MLFLOW_TRACKING_URI")}
    result = subprocess.run(
        [sys.executable, "-m", "search.cli", *args], cwd=folder, capture_output=True, text=True,
        env={**base, "PYTHONUNBUFFERED": "1", "FER_SEARCH_DB_RETRY_S": "3", **(env or {})},
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr


def _mlflow_texts(tracking_uri: str, experiment_name: str) -> list[str]:
    """Every param, tag, metric name and text artifact of every run, and the experiment's."""
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    texts = [json.dumps(experiment.tags), experiment.artifact_location]
    for run in client.search_runs([experiment.experiment_id], max_results=1000):
        texts += [json.dumps(run.data.params), json.dumps(run.data.tags),
                  json.dumps(sorted(run.data.metrics)), run.info.run_name or ""]
        texts += _text_artifacts(client, run.info.run_id)
    return texts


def _text_artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    texts = []
    for item in client.list_artifacts(run_id, path):
        if item.is_dir:
            texts += _text_artifacts(client, run_id, item.path)
        elif item.path.endswith((".yaml", ".json", ".txt")):
            texts.append(Path(client.download_artifacts(run_id, item.path)).read_text())
    return texts


def _optuna_texts(storage, name: str) -> list[str]:
    study = optuna.load_study(study_name=name, storage=storage)
    system_attrs = storage.get_study_system_attrs(storage.get_study_id_from_name(name))
    texts = [json.dumps(study.user_attrs), json.dumps(system_attrs, default=str)]
    for trial in study.get_trials():
        texts += [json.dumps(trial.user_attrs, default=str),
                  json.dumps(trial.system_attrs, default=str)]
    return texts


def test_the_storage_password_appears_nowhere(pg_cluster, mlflow_server, tmp_path,
                                              monkeypatch, stores):
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    password = pg_cluster.password
    url = pg_cluster.url()
    spec = write_spec(tmp_path, name="pg-secret", space=SPACE, storage=url)  # in the spec too
    outputs = []

    code, text = _cli(tmp_path, "run", str(spec), "--storage", url,
                      "--tracking-uri", mlflow_server.uri, "--n-trials", "1")
    outputs.append(text)
    assert code == 0, text[-3000:].replace(password, "<password>")
    code, text = _cli(tmp_path, "run", str(spec), "--workers", "2",  # the URL from the spec
                      "--tracking-uri", mlflow_server.uri)
    outputs.append(text)
    assert code == 0, text[-3000:].replace(password, "<password>")
    for args in (("status", "pg-secret"), ("studies",), ("status", "no-such-study")):
        outputs.append(_cli(tmp_path, *args, "--storage", url)[1])
    # Failing URLs: a wrong password, and a server that is not there (a one-shot command: not
    # retried, the cause in one line).
    wrong = url.replace(password, password + "-wrong")
    code, text = _cli(tmp_path, "studies", "--storage", wrong)
    assert code == 1 and "password authentication failed" in text
    outputs.append(text)
    gone = url.replace(f":{pg_cluster.port}/", f":{_closed_port()}/")
    code, text = _cli(tmp_path, "status", "pg-secret", "--storage", gone)
    assert code == 1 and "Connection refused" in text and "database unavailable" not in text
    outputs.append(text)

    texts = {"cli": outputs}
    texts["mlflow"] = _mlflow_texts(mlflow_server.uri, "pg-secret")
    texts["optuna"] = _optuna_texts(stores.get(url), "pg-secret")
    texts["logs"] = [p.read_text(errors="replace") for p in tmp_path.rglob("*.log")]
    texts["logs"].append(mlflow_server.log.read_text(errors="replace"))
    for where, found in texts.items():
        leaks = [t for t in found if t and password in t]
        assert not leaks, f"the password leaked into {where}"

    # The masked form is there: the checks above looked at the right places.
    assert any("fer:***@127.0.0.1" in t for t in texts["mlflow"])
    assert "fer:***@127.0.0.1" in outputs[0]
    assert any("***" in t for t in texts["optuna"])  # the spec kept on the study


def _closed_port() -> int:
    from benchmarks.pgcluster import free_port

    return free_port()  # nothing listens there once the probe socket is closed
