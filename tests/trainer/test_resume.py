"""A training SIGKILLed after epoch k resumes there and ends exactly like an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, settings, train
from trainer.heads.checkpoint import checkpoint_dir
from trainer.heads.group_train import train_group

BASE = TrainConfig(weights="none", image_size=32, epochs=4, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3, class_weight="balanced")
ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import os, signal, sys
from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, train
from trainer.heads.group_train import train_group
configs = [TrainConfig.from_dict(c) for c in {configs!r}]
kill_at = {kill_at}

def die(*args):
    epoch = args[-2]
    if epoch == kill_at:
        sys.stdout.flush()
        os.kill(os.getpid(), signal.SIGKILL)

data = array_dataset({cache!r})
if len(configs) == 1:
    train(configs[0], data, on_epoch_end=die)
else:
    train_group(configs, data, die)
"""


def killed_after(configs: list[TrainConfig], cache: Path, kill_at: int) -> None:
    """Trains in a child process that SIGKILLs itself right after epoch `kill_at` was reported
    (its checkpoint of that epoch is on disk by then)."""
    code = _CHILD.format(configs=[c.to_dict() for c in configs], kill_at=kill_at, cache=str(cache))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def assert_same(got, want):
    assert got.history == want.history
    for a, b in zip(got.top_weights, want.top_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert got.val_evaluation.confusion == want.val_evaluation.confusion


def test_a_killed_head_training_resumes_and_equals_an_uninterrupted_one(tmp_path):
    cache = tmp_path / "killed"
    killed_after([BASE], cache, kill_at=2)
    assert list(checkpoint_dir(array_dataset(cache)).glob("head-*.npz"))
    seen = []
    resumed = train(BASE, array_dataset(cache), on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2, 3, 4]  # each epoch once: 1-2 replayed, 3-4 trained
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_trained == 2
    assert not list(checkpoint_dir(array_dataset(cache)).glob("*.npz"))  # ended: removed
    assert_same(resumed, train(BASE, array_dataset(tmp_path / "whole")))


def test_a_killed_group_resumes_every_member(tmp_path):
    configs = [BASE, BASE.replace(learning_rate=1e-2, head_width=16, epochs=3)]
    cache = tmp_path / "killed"
    killed_after(configs, cache, kill_at=1)
    seen = []
    resumed = train_group(configs, array_dataset(cache), lambda i, e, m: seen.append((i, e)))
    assert sorted(seen) == [(0, 1), (0, 2), (0, 3), (0, 4), (1, 1), (1, 2), (1, 3)]
    whole = train_group(configs, array_dataset(tmp_path / "whole"))
    for got, want in zip(resumed, whole, strict=True):
        assert got.resumed_from_epoch == 1
        assert_same(got, want)


def test_a_killed_fine_tuning_resumes_from_its_keras_checkpoint(tmp_path):
    config = BASE.replace(trainable_blocks=1, epochs=2, class_weight="none")
    cache = tmp_path / "killed"
    killed_after([config], cache, kill_at=1)
    assert list(checkpoint_dir(array_dataset(cache)).glob("fit-*.npz"))
    seen = []
    resumed = train(config, array_dataset(cache), on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2]
    assert resumed.resumed_from_epoch == 1 and resumed.epochs_trained == 1
    assert_same(resumed, train(config, array_dataset(tmp_path / "whole")))


def test_head_checkpoints_wait_until_the_last_one_is_checkpoint_every_s_old(tmp_path):
    """The default writes a head's checkpoint every FER_SEARCH_CHECKPOINT_S, not every epoch: a
    training stopped before that has none, starts over, and still ends the same."""
    cache = tmp_path / "stopped"

    def stop_at_three(epoch, metrics):
        if epoch == 3:
            raise KeyboardInterrupt

    with settings.override(FER_SEARCH_CHECKPOINT_S=3600):
        with pytest.raises(KeyboardInterrupt):
            train(BASE, array_dataset(cache), on_epoch_end=stop_at_three)
        assert not list(checkpoint_dir(array_dataset(cache)).glob("*.npz"))
        resumed = train(BASE, array_dataset(cache))
        assert resumed.resumed_from_epoch == 0
        assert_same(resumed, train(BASE, array_dataset(tmp_path / "whole")))

    with settings.override(FER_SEARCH_CHECKPOINT_S=0), pytest.raises(KeyboardInterrupt):
        train(BASE, array_dataset(tmp_path / "every"), on_epoch_end=stop_at_three)
    assert list(checkpoint_dir(array_dataset(tmp_path / "every")).glob("head-*.npz"))
