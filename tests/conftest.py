"""Shared test set-up: TensorFlow quiet, a tiny in-memory dataset for training tests."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
