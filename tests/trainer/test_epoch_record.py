"""Sharing the epochs axis: a trial answered from its group's record equals a fresh training."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, train
from trainer.heads.epoch_record import EpochRecord
from trainer.heads.grouping import shareable
from trainer.network.model import predict_proba

BASE = TrainConfig(weights="none", image_size=32, epochs=2, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3)


def test_an_answered_trial_equals_a_fresh_training(tmp_path):
    shared = array_dataset(tmp_path / "shared")
    first = train(BASE, shared, share_epochs_to=5)
    assert first.epochs_trained == 5 and first.epochs_run == 2
    assert EpochRecord(shared, BASE).epochs() == 5

    answered = train(BASE.replace(epochs=4), shared)
    assert answered.epochs_trained == 0

    fresh = train(BASE.replace(epochs=4), array_dataset(tmp_path / "fresh"))  # no record there
    assert fresh.epochs_trained == 4
    assert len(answered.history) == len(fresh.history) == 4
    for got, want in zip(answered.history, fresh.history, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == pytest.approx(want[key], abs=1e-6)
    probs_answered = predict_proba(answered.build_model(), shared.val.images)
    probs_fresh = predict_proba(fresh.build_model(), shared.val.images)
    np.testing.assert_array_equal(probs_answered.argmax(1), probs_fresh.argmax(1))
    np.testing.assert_allclose(probs_answered, probs_fresh, atol=1e-6)
    assert answered.val_evaluation.confusion == fresh.val_evaluation.confusion


def test_the_shorter_trial_of_a_longer_training_reports_only_its_epochs(tmp_path):
    data = array_dataset(tmp_path)
    seen = []
    result = train(BASE, data, on_epoch_end=lambda e, m: seen.append(e), share_epochs_to=4)
    assert seen == [1, 2]
    assert [row["epoch"] for row in result.history] == [1, 2]
    assert result.metrics["val_loss"] == result.history[-1]["val_loss"]


def test_replay_reports_every_epoch_and_lets_the_caller_prune(tmp_path):
    data = array_dataset(tmp_path)
    train(BASE.replace(epochs=3), data)

    class Pruned(Exception):
        pass

    seen = []

    def prune_at_two(epoch, metrics):
        seen.append(epoch)
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(BASE.replace(epochs=3), data, on_epoch_end=prune_at_two)
    assert seen == [1, 2]


def test_a_pruned_training_leaves_its_epochs_and_a_longer_one_trains_again(tmp_path):
    data = array_dataset(tmp_path)

    class Pruned(Exception):
        pass

    def prune_at_two(epoch, metrics):
        if epoch == 2:
            raise Pruned

    with pytest.raises(Pruned):
        train(BASE.replace(epochs=4), data, on_epoch_end=prune_at_two, share_epochs_to=4)
    assert EpochRecord(data, BASE).epochs() == 2
    assert train(BASE, data).epochs_trained == 0  # 2 epochs are on record
    longer = train(BASE.replace(epochs=3), data)
    # A pruned training ended normally: no checkpoint is left, the longer one starts over.
    assert longer.epochs_trained == 3 and longer.resumed_from_epoch == 0
    assert EpochRecord(data, BASE).epochs() == 3


def test_a_training_that_shares_no_epochs_keeps_arrays_for_its_own_epoch_count(tmp_path):
    """Without `share_epochs_to` (a random trial) every epoch's row is recorded, but the arrays
    only after the config's own epochs: that config is answered, a shorter one trains."""
    data = array_dataset(tmp_path)
    first = train(BASE.replace(epochs=3), data)
    record = EpochRecord(data, BASE)
    assert first.epochs_trained == 3 and record.epochs() == 3
    assert sorted(p.name for p in record.path.glob("e*.npz")) == ["e3.npz"]
    assert record.answer(2) is None and record.answer(3) is not None

    again = train(BASE.replace(epochs=3), data)
    assert again.epochs_trained == 0 and again.history == first.history
    shorter = train(BASE, data)  # epochs 2: no arrays on record, trained again
    assert shorter.epochs_trained == 2 and shorter.history == first.history[:2]
    assert sorted(p.name for p in record.path.glob("e*.npz")) == ["e2.npz", "e3.npz"]
    assert EpochRecord(data, BASE).answer(2) is not None  # kept for the next one


def test_an_interrupted_training_resumes_after_its_last_epoch(tmp_path):
    data = array_dataset(tmp_path)

    def stop_at_two(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(BASE.replace(epochs=4), data, on_epoch_end=stop_at_two)
    seen = []
    resumed = train(BASE.replace(epochs=3), data, on_epoch_end=lambda e, m: seen.append(e))
    assert seen == [1, 2, 3]  # the restored epochs replayed, then the new one
    assert resumed.resumed_from_epoch == 2 and resumed.epochs_trained == 1
    fresh = train(BASE.replace(epochs=3), array_dataset(tmp_path / "fresh"), resume=False)
    assert resumed.history == fresh.history
    for got, want in zip(resumed.top_weights, fresh.top_weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_only_frozen_bases_without_early_stopping_share_epochs():
    assert shareable(BASE)
    assert not shareable(BASE.replace(trainable_blocks=1))
    assert not shareable(BASE.replace(early_stopping_patience=2))
    assert not shareable(BASE.replace(augment=True))
