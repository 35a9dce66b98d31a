"""One head's error costs only that head (issue 29): a pass whose program raises is re-run head
by head for that epoch; the head that raises alone fails with a `HeadFailed` that says why, and
its group-mates compute exactly what they compute without it."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import HeadFailed, TrainConfig
from trainer.heads import engine as head_engine
from trainer.heads.group_train import train_group

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3)
POISON_WIDTH = 13
EIGHT = [BASE.replace(head_width=w, learning_rate=lr)
         for w, lr in [(32, 3e-3), (16, 1e-2), (48, 1e-3), (POISON_WIDTH, 3e-3),
                       (24, 3e-3), (40, 1e-2), (8, 1e-3), (56, 3e-3)]]


def assert_same(got, want):
    assert got.history == want.history
    for a, b in zip(got.top_weights, want.top_weights, strict=True):
        np.testing.assert_array_equal(a, b)


def failing_when(monkeypatch, fails):
    """`engine.run_epoch` raising when `fails(specs, step0)` says so; returns the list of the
    head counts of every program run."""
    real = head_engine.run_epoch
    runs: list[int] = []

    def run_epoch(prog, specs, x, y, weight, order, batch_size, step0):
        runs.append(len(specs))
        if fails(specs, step0):
            raise MemoryError("simulated: no memory for this head")
        return real(prog, specs, x, y, weight, order, batch_size, step0)

    monkeypatch.setattr(head_engine, "run_epoch", run_epoch)
    return runs


def test_one_head_raising_in_a_pass_of_eight_fails_alone(tmp_path, monkeypatch):
    """The poison head raises from its second epoch on, in any program it is part of: it fails
    with the reason, and the other seven complete, bit for bit what they compute without it
    (and, the culprit found, they train together again rather than one at a time)."""
    runs = failing_when(monkeypatch, lambda specs, step0: step0 > 0 and any(
        s.head_width == POISON_WIDTH for s in specs))
    together = train_group(EIGHT, array_dataset(tmp_path / "group"))
    monkeypatch.undo()
    healthy = [c for c in EIGHT if c.head_width != POISON_WIDTH]
    without = train_group(healthy, array_dataset(tmp_path / "without"))

    poison = together[EIGHT.index(BASE.replace(head_width=POISON_WIDTH))]
    assert isinstance(poison, HeadFailed)
    assert "out of memory at batch_size 16" in str(poison) and "epoch 2" in str(poison)
    assert isinstance(poison.__cause__, MemoryError)
    rest = [r for c, r in zip(EIGHT, together, strict=True) if c.head_width != POISON_WIDTH]
    for got, want in zip(rest, without, strict=True):
        assert_same(got, want)
    # epoch 1 together (8), epoch 2: together (fails), then head by head (8 of 1),
    # epoch 3 together again without the culprit (7).
    assert runs == [8, 8, 1, 1, 1, 1, 1, 1, 1, 1, 7]


def test_a_pass_that_fails_only_together_trains_its_heads_one_at_a_time(tmp_path, monkeypatch):
    """No head raises alone (the program is too large only for all of them at once): every head
    completes, as it would together, and the pass goes on one head at a time."""
    configs = EIGHT[:3]
    runs = failing_when(monkeypatch, lambda specs, step0: len(specs) > 1 and step0 > 0)
    alone = train_group(configs, array_dataset(tmp_path / "alone"))
    monkeypatch.undo()
    together = train_group(configs, array_dataset(tmp_path / "together"))
    for got, want in zip(alone, together, strict=True):
        assert_same(got, want)
    assert runs == [3, 3, 1, 1, 1, 1, 1, 1]


def test_a_lone_head_that_raises_fails_with_its_reason(tmp_path, monkeypatch):
    failing_when(monkeypatch, lambda specs, step0: True)
    (outcome,) = train_group([BASE], array_dataset(tmp_path / "a"))
    assert isinstance(outcome, HeadFailed)
    assert str(outcome).startswith("out of memory at batch_size 16 (head_width 32, epoch 1)")


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_stop_is_not_a_head_failure(tmp_path, monkeypatch, error):
    def stop(*args):
        raise error()

    monkeypatch.setattr(head_engine, "run_epoch", stop)
    with pytest.raises(error):
        train_group(EIGHT[:2], array_dataset(tmp_path / "a"))
