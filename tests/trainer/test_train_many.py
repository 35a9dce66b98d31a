"""`train_many`: the trainer's one protocol for training several configurations at once. It
decides itself which share a pass (`batch_key`), says what a call holds (`batch_cost`), and calls
back per epoch and per finished configuration; each configuration computes what `train`
computes for it alone, and one that raises fails alone."""

from __future__ import annotations

import pytest

from tests.trainer.arrays import array_dataset
from tests.trainer.test_group_train import assert_same
from trainer import HeadFailed, TrainConfig, batch_cost, batch_key, train, train_many
from trainer.heads import engine as head_engine

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3)


def test_batch_cost_counts_heads_and_configs_that_train_alone():
    assert batch_cost([]) == 0
    assert batch_cost([BASE, BASE.replace(epochs=9)]) == 1  # one head, followed to 9 epochs
    assert batch_cost([BASE, BASE.replace(learning_rate=1e-2)]) == 2
    assert batch_cost([BASE.replace(augment=True), BASE.replace(augment=True)]) == 2  # alone
    assert batch_key(BASE) == batch_key(BASE.replace(batch_size=8, head_width=8, epochs=1))
    assert batch_key(BASE.replace(trainable_blocks=1)) is None


def test_mixed_configs_each_equal_alone_and_each_heard_once_in_order_of_its_end(tmp_path):
    """Two of one key (one pass), one of other class weights (its own pass), one that cannot
    share (early stopping: Keras fit): every entry is what `train` gives alone, every epoch
    reaches `on_epoch` under the config's index, and `on_done` hears each config once, with its
    entry, before the call returns."""
    configs = [BASE, BASE.replace(class_weight="balanced"),
               BASE.replace(learning_rate=1e-2, head_width=16, epochs=2),
               BASE.replace(early_stopping_patience=1, epochs=2)]
    assert batch_key(configs[0]) == batch_key(configs[2]) != batch_key(configs[1])
    assert batch_key(configs[3]) is None
    epochs, done = [], []
    entries = train_many(configs, array_dataset(tmp_path / "many"),
                         on_epoch=lambda i, e, m: epochs.append((i, e)),
                         on_done=lambda i, entry: done.append((i, entry)))
    assert sorted(i for i, _ in done) == [0, 1, 2, 3]
    assert all(entries[i] is entry for i, entry in done)
    assert done[-1][0] == 3  # trained last, alone (after the others' batches)
    for i, config in enumerate(configs):
        alone = train(config, array_dataset(tmp_path / f"alone{i}"))
        assert_same(entries[i], alone)
        assert [e for j, e in epochs if j == i] == [row["epoch"] for row in alone.history]


def test_an_epoch_callback_that_raises_stops_that_config_only(tmp_path):
    class Pruned(Exception):
        pass

    def prune_first_at_two(index, epoch, metrics):
        if (index, epoch) == (0, 2):
            raise Pruned

    configs = [BASE, BASE.replace(learning_rate=1e-2)]
    pruned, full = train_many(configs, array_dataset(tmp_path / "a"), on_epoch=prune_first_at_two)
    assert isinstance(pruned, Pruned)
    assert_same(full, train(configs[1], array_dataset(tmp_path / "b")))


def test_a_head_that_raises_fails_alone_with_head_failed(tmp_path, monkeypatch):
    real = head_engine.run_epoch

    def run_epoch(prog, specs, *args):
        if any(s.head_width == 13 for s in specs):
            raise MemoryError("simulated: no memory for this head")
        return real(prog, specs, *args)

    monkeypatch.setattr(head_engine, "run_epoch", run_epoch)
    configs = [BASE, BASE.replace(head_width=13)]
    healthy, failed = train_many(configs, array_dataset(tmp_path / "a"))
    monkeypatch.undo()
    assert isinstance(failed, HeadFailed)
    assert_same(healthy, train(BASE, array_dataset(tmp_path / "b")))


def test_an_on_done_error_propagates_unchanged(tmp_path):
    class Recording(Exception):
        pass

    def on_done(index, entry):
        raise Recording(index)

    with pytest.raises(Recording):
        train_many([BASE.replace(epochs=1)], array_dataset(tmp_path), on_done=on_done)


def test_a_batch_whose_data_cannot_be_used_is_every_member_s_entry(tmp_path):
    """An error of the whole pass (here: the data at another image size) is each entry."""
    configs = [BASE.replace(image_size=48), BASE.replace(image_size=48, learning_rate=1e-2)]
    entries = train_many(configs, array_dataset(tmp_path))
    assert all(isinstance(e, Exception) for e in entries) and entries[0] is entries[1]
