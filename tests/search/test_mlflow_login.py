"""The tests' MLflow server has its login on (issue 30: every store asks who you are), as compose
and Kubernetes run it: a write without a login or with a wrong password is refused (401), the
workers' user writes, and MLflow's client with the test's credentials (the `mlflow_server`
fixture) creates an experiment and registers a model."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
import uuid
from base64 import b64encode

import pytest
from mlflow import MlflowClient

from tests.infra.mlflow_server import WORKER_USER

pytestmark = pytest.mark.postgres
CREATE = "/api/2.0/mlflow/experiments/create"


def _post(uri: str, path: str, body: dict, user: tuple[str, str] | None) -> int:
    request = urllib.request.Request(uri + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    if user:
        token = b64encode(f"{user[0]}:{user[1]}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def test_a_write_needs_a_login(mlflow_server):
    name = f"login-{uuid.uuid4().hex[:8]}"
    assert _post(mlflow_server.uri, CREATE, {"name": name}, None) == 401
    assert _post(mlflow_server.uri, CREATE, {"name": name},
                 (WORKER_USER, "not-" + mlflow_server.password)) == 401
    assert _post(mlflow_server.uri, CREATE, {"name": name},
                 (WORKER_USER, mlflow_server.password)) == 200
    model = f"login-model-{uuid.uuid4().hex[:8]}"
    assert _post(mlflow_server.uri, "/api/2.0/mlflow/registered-models/create", {"name": model},
                 None) == 401


def test_the_client_logs_in_with_the_fixtures_credentials(mlflow_server, monkeypatch):
    client = MlflowClient(mlflow_server.uri)
    name = f"login-client-{uuid.uuid4().hex[:8]}"
    experiment = client.create_experiment(name)
    assert client.get_experiment(experiment).name == name
    model = client.create_registered_model(f"{name}-model")
    assert model.name == f"{name}-model"
    monkeypatch.delenv("MLFLOW_TRACKING_PASSWORD")  # the same client, no password: refused
    with pytest.raises(Exception, match="401|[Uu]nauthori[sz]ed|credentials"):
        MlflowClient(mlflow_server.uri).create_experiment(name + "-anonymous")
