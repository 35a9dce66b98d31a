"""Heads-only studies run TensorFlow's ops side by side, one thread each
(`set_threads(ops_in_parallel=True)`), and extract features that many batches at a time; the
features are the same as one batch at a time."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, runtime
from trainer.network import features
from trainer.network.model import build_network, predict_proba

PROBE = """
import sys
import trainer
from trainer.runtime import defer_tensorflow, parallel_batches

defer_tensorflow({threads}, ops_in_parallel=True)
trainer.train_many
import tensorflow as tf
print(tf.config.threading.get_intra_op_parallelism_threads(),
      tf.config.threading.get_inter_op_parallelism_threads(), parallel_batches())
"""


def _plan(threads) -> str:
    out = subprocess.run([sys.executable, "-c", PROBE.format(threads=threads)],
                         capture_output=True, text=True, check=True, timeout=300)
    return out.stdout.strip()


def test_ops_in_parallel_gives_each_op_one_thread_and_runs_as_many_ops_as_cores():
    cores = os.cpu_count()
    assert _plan(None) == f"1 {cores} {cores}"
    assert _plan(1) == "1 1 1"  # one core per worker (--workers N): as before


def test_batches_extracted_side_by_side_equal_one_at_a_time(tmp_path, monkeypatch):
    config = TrainConfig(weights="none", image_size=32)
    network = build_network(config)
    monkeypatch.setattr(features, "EXTRACT_BATCH", 8)  # 84 faces: 11 batches, the last short
    got, probs = {}, {}
    for side_by_side in (1, 2):
        monkeypatch.setattr(runtime, "parallel_batches", lambda n=side_by_side: n)
        features.forget_loaded()
        data = array_dataset(tmp_path / str(side_by_side))
        array, seconds = features.features_for(data, "train", config, network)
        assert seconds > 0  # computed here, not read from a cache
        got[side_by_side] = np.array(array)
        probs[side_by_side] = predict_proba(network.frozen, data.val.images, batch_size=8)
    assert got[1].shape == (84, 512) and probs[1].shape == (28, 512)
    np.testing.assert_array_equal(got[1], got[2])
    np.testing.assert_array_equal(probs[1], probs[2])


def test_side_by_side_keeps_the_order_and_raises_the_first_error(monkeypatch):
    monkeypatch.setattr(runtime, "parallel_batches", lambda: 2)
    assert runtime.side_by_side(lambda i: i * i, range(7)) == [0, 1, 4, 9, 16, 25, 36]

    def fail_on_three(i):
        if i == 3:
            raise ValueError("batch 3")
        return i

    with pytest.raises(ValueError, match="batch 3"):
        runtime.side_by_side(fail_on_three, range(7))
