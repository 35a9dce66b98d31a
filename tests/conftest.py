"""Shared test set-up: TensorFlow quiet, a tiny in-memory dataset for training tests."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
# A head checkpoint after every epoch, so a test that kills a training after epoch k knows where
# it resumes (the default writes one every 10 s; tests/trainer/test_resume.py tests that too).
os.environ.setdefault("FER_SEARCH_CHECKPOINT_S", "0")
# Every epoch's value written to the study as it ends, so that tests can watch a trial mid-way
# and find a killed trial's epochs (the default, without a pruner, writes them every 5 s and at
# the trial's end: tests/search/test_study.py tests that).
os.environ.setdefault("FER_SEARCH_REPORT_S", "0")
# Every MLflow server a test starts (tests/infra's, `fer-search ui`, the deployments' launcher)
# without MLflow 3's job runner: it adds 8 Python processes (a runner and 7 huey consumers, each
# importing MLflow) that no test uses; on 2 cores they took the browser tests from 96 s to 150 s.
os.environ.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
# Every process a test starts (workers, the CLI) imports `search` and `trainer` from this
# checkout, as the test itself does, not from wherever the virtualenv's editable install points
# (a second checkout, a git worktree, sharing one virtualenv would test the first's workers).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.environ.get("PYTHONPATH")]))


@pytest.fixture(scope="session", autouse=True)
def _mlflow_template_dir(tmp_path_factory):
    """New MLflow stores are copied from a pre-migrated template (search.tracking.local_store); the
    suite builds its own instead of writing into the user's ~/.cache."""
    os.environ["FER_SEARCH_MLFLOW_TEMPLATE_DIR"] = str(tmp_path_factory.mktemp("mlflow-template"))
    yield
