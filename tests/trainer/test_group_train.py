"""Heads of one group trained together equal each head trained alone; members drop out alone."""

from __future__ import annotations

import numpy as np
import pytest

from tests.trainer.arrays import array_dataset
from trainer import TrainConfig, TrainingDiverged, batch_key, train
from trainer.heads import engine as head_engine
from trainer.heads.epoch_record import EpochRecord
from trainer.heads.group_train import train_group
from trainer.heads.grouping import track_key

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3)
MEMBERS = [
    BASE,
    BASE.replace(learning_rate=1e-2, head_width=16),
    BASE.replace(learning_rate=1e-3, head_width=48, epochs=2),
]


def assert_same(got, want):
    """Exact equality: every head's ops are its own and deterministic (no op is shared or fused
    across heads), so a group must reproduce each member bit for bit; no tolerance is needed."""
    assert got.history == want.history
    assert len(got.top_weights) == len(want.top_weights)
    for a, b in zip(got.top_weights, want.top_weights, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("class_weight", ["none", "balanced"])
def test_a_group_trained_together_equals_each_member_alone(tmp_path, class_weight):
    configs = [c.replace(class_weight=class_weight) for c in MEMBERS]
    seen = []
    together = train_group(configs, array_dataset(tmp_path / "group"),
                           lambda i, e, m: seen.append((i, e, m["val_loss"])))
    assert sorted((i, e) for i, e, _ in seen) == [(0, 1), (0, 2), (0, 3), (1, 1), (1, 2),
                                                  (1, 3), (2, 1), (2, 2)]
    for i, config in enumerate(configs):
        alone = train(config, array_dataset(tmp_path / f"alone{i}"))
        assert_same(together[i], alone)
        assert together[i].epochs_trained == config.epochs
        assert [row["val_loss"] for row in alone.history] == [v for j, _, v in seen if j == i]


def test_each_result_is_handed_over_once_when_its_head_ends_while_others_train(tmp_path):
    """`on_result` hears each member once, with the entry `train_group` returns, as soon as its
    head's training ends: the 2-epoch member and the pruned one before the others' last epoch;
    a member answered from the record before any training."""
    class Pruned(Exception):
        pass

    data = array_dataset(tmp_path)
    train(MEMBERS[0], data)  # on record: answered before the group trains
    configs = [*MEMBERS, BASE.replace(learning_rate=2e-3, head_width=8)]
    events = []

    def on_epoch_end(index, epoch, metrics):
        events.append(("epoch", index, epoch))
        if index == 3 and epoch == 1:
            raise Pruned("pruned")

    together = train_group(configs, data, on_epoch_end,
                           on_result=lambda i, r: events.append(("result", i, r)))
    results = [e for e in events if e[0] == "result"]
    assert sorted(i for _, i, _ in results) == [0, 1, 2, 3]
    for _, i, entry in results:
        assert entry is together[i]
    assert isinstance(together[3], Pruned)
    assert events.index(("result", 0, together[0])) < events.index(("epoch", 1, 1))
    last_epoch = events.index(("epoch", 1, 3))
    assert events.index(("result", 2, together[2])) < last_epoch
    assert events.index(("result", 3, together[3])) < last_epoch
    assert events.index(("result", 1, together[1])) > last_epoch


def test_a_pruned_member_drops_out_and_the_others_go_on_unchanged(tmp_path):
    class Pruned(Exception):
        pass

    def prune_second_at_two(index, epoch, metrics):
        if index == 1 and epoch == 2:
            raise Pruned("pruned")

    data = array_dataset(tmp_path / "a")
    pruned = train_group(MEMBERS, data, prune_second_at_two)
    full = train_group(MEMBERS, array_dataset(tmp_path / "b"))
    assert isinstance(pruned[1], Pruned)
    assert EpochRecord(data, MEMBERS[1]).epochs() == 2  # its finished epochs stay on record
    assert_same(pruned[0], full[0])
    assert_same(pruned[2], full[2])


def test_a_diverging_member_fails_alone(tmp_path):
    configs = [BASE, BASE.replace(learning_rate=1e30)]
    results = train_group(configs, array_dataset(tmp_path / "a"))
    assert isinstance(results[1], TrainingDiverged)
    assert "nan" in str(results[1]) or "inf" in str(results[1])
    assert_same(results[0], train(BASE, array_dataset(tmp_path / "b")))


def test_configs_equal_but_for_epochs_share_one_head_and_the_record_answers_shorter_ones(
    tmp_path,
):
    data = array_dataset(tmp_path / "a")
    short, long = BASE.replace(epochs=2), BASE.replace(epochs=4)
    results = train_group([short, long], data, share_epochs_to=5)
    assert results[0].history == results[1].history[:2]
    assert EpochRecord(data, BASE).epochs() == 5  # trained to share_epochs_to
    answered = train(BASE.replace(epochs=3), data)
    assert answered.epochs_trained == 0
    assert_same(answered, train(BASE.replace(epochs=3), array_dataset(tmp_path / "b")))


def test_group_keys():
    assert batch_key(BASE) == batch_key(BASE.replace(learning_rate=0.1, head_width=8, epochs=9))
    assert batch_key(BASE) == batch_key(BASE.replace(batch_size=8))  # another pass, at once
    # Another seed: other batches, gathered per head in the same pass (a study's repeats)
    assert batch_key(BASE) == batch_key(BASE.replace(seed=1))
    assert batch_key(BASE) != batch_key(BASE.replace(class_weight="balanced"))
    assert batch_key(BASE.replace(trainable_blocks=1)) is None
    assert batch_key(BASE.replace(augment=True)) is None
    assert batch_key(BASE.replace(early_stopping_patience=2)) is None


def test_track_keys_join_configs_equal_but_for_epochs():
    assert track_key(BASE) == track_key(BASE.replace(epochs=9))
    assert track_key(BASE) != track_key(BASE.replace(learning_rate=0.1))
    assert track_key(BASE) != track_key(BASE.replace(head_width=8))
    assert track_key(BASE.replace(trainable_blocks=1)) is None


def test_groups_of_the_same_widths_in_another_order_share_one_compiled_program(tmp_path):
    head_engine.clear_programs()
    first = train_group(MEMBERS, array_dataset(tmp_path / "a"))
    assert len(head_engine._programs) == 2  # three heads, then two after epoch 2
    reordered = [MEMBERS[2], MEMBERS[0], MEMBERS[1]]
    second = train_group(reordered, array_dataset(tmp_path / "b"))
    assert len(head_engine._programs) == 2  # reused, not traced again
    for i, j in ((0, 2), (1, 0), (2, 1)):
        assert_same(second[i], first[j])
    with pytest.raises(ValueError, match="one group"):
        train_group([BASE, BASE.replace(class_weight="balanced")], None)


def test_heads_of_several_seeds_train_in_one_pass_each_equal_to_alone(tmp_path):
    """A study's repeats: one configuration with seeds 0, 1, 2 (and a pass-mate of another
    learning rate on seed 0) in one pass, each head on its own seed's batches, each the same
    as alone bit for bit; one program serves them, another the single-seed groups."""
    head_engine.clear_programs()
    calls = []
    real = head_engine.run_epoch

    def spy(prog, specs, *args):
        calls.append(sorted({s.seed for s in specs}))
        return real(prog, specs, *args)

    configs = [BASE, BASE.replace(seed=1), BASE.replace(seed=2),
               BASE.replace(learning_rate=1e-2)]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(head_engine, "run_epoch", spy)
        together = train_group(configs, array_dataset(tmp_path / "group"))
    assert calls == [[0, 1, 2]] * BASE.epochs  # one pass an epoch, all three seeds in it
    for i, config in enumerate(configs):
        alone = train(config, array_dataset(tmp_path / f"alone{i}"))
        assert together[i].history == alone.history, config
        for a, b in zip(together[i].top_weights, alone.top_weights, strict=True):
            np.testing.assert_array_equal(a, b)
    # Different seeds saw different batches: their first epochs differ.
    assert together[0].history[0] != together[1].history[0]


def test_heads_of_any_widths_share_one_compiled_program(tmp_path):
    """A random search draws a new width per trial: the engine's variables leave the width
    open, so it must not trace a program per width (or per set of widths)."""
    head_engine.clear_programs()
    narrow = train(BASE.replace(head_width=8), array_dataset(tmp_path / "a"))
    wide = train(BASE.replace(head_width=40), array_dataset(tmp_path / "b"))
    assert len(head_engine._programs) == 1
    assert [w.shape for w in narrow.top_weights][:2] == [(512, 8), (8,)]
    assert [w.shape for w in wide.top_weights][:2] == [(512, 40), (40,)]
    again = train(BASE.replace(head_width=8), array_dataset(tmp_path / "c"))
    assert_same(again, narrow)


def test_the_engine_computes_what_keras_fit_computes_on_the_same_batches(tmp_path):
    """The engine is Keras' arithmetic, not another model: without dropout (the one random
    stream they do not share), the engine and Keras `fit` (the early-stopping path, which feeds
    the same (seed, epoch) order) give the same per-epoch scores up to float round-off. (Their
    kept weights differ by design: early stopping keeps the best val_loss epoch's.)"""
    config = BASE.replace(dropout=0.0, class_weight="balanced")
    engine = train(config, array_dataset(tmp_path / "engine"), resume=False)
    keras_fit = train(config.replace(early_stopping_patience=100),
                      array_dataset(tmp_path / "keras"), resume=False)
    assert len(engine.history) == len(keras_fit.history) == config.epochs
    for got, want in zip(engine.history, keras_fit.history, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_macro_f1"):
            assert got[key] == pytest.approx(want[key], rel=1e-4, abs=1e-5), key


def test_heads_of_different_batch_sizes_train_at_once_each_equal_to_alone(tmp_path):
    """One group, three batch sizes: three passes on their own threads. Each head computes what
    it computes alone, and its callbacks arrive on the caller's thread, in epoch order."""
    import threading

    configs = [BASE, BASE.replace(batch_size=8, head_width=16), BASE.replace(batch_size=32),
               BASE.replace(batch_size=8, learning_rate=1e-2, epochs=2)]
    assert len({batch_key(c) for c in configs}) == 1
    seen = []
    caller = threading.get_ident()

    def note(index, epoch, metrics):
        assert threading.get_ident() == caller
        seen.append((index, epoch))

    together = train_group(configs, array_dataset(tmp_path / "group"), note)
    for i, config in enumerate(configs):
        assert [e for j, e in seen if j == i] == list(range(1, config.epochs + 1))
        assert_same(together[i], train(config, array_dataset(tmp_path / f"alone{i}")))
    # Different batch sizes are different trainings: equal heads end elsewhere.
    assert together[0].history != together[2].history


def test_a_pruned_head_of_one_pass_leaves_the_other_passes_unchanged(tmp_path):
    class Pruned(Exception):
        pass

    configs = [BASE, BASE.replace(batch_size=8), BASE.replace(batch_size=32, head_width=8)]

    def prune_second_at_two(index, epoch, metrics):
        if index == 1 and epoch == 2:
            raise Pruned("pruned")

    pruned = train_group(configs, array_dataset(tmp_path / "a"), prune_second_at_two)
    full = train_group(configs, array_dataset(tmp_path / "b"))
    assert isinstance(pruned[1], Pruned)
    assert_same(pruned[0], full[0])
    assert_same(pruned[2], full[2])


def test_an_error_in_one_pass_fails_its_head_only_and_leaves_no_thread(tmp_path, monkeypatch):
    """A pass that fails on its thread (out of memory, say) fails its own head, with the reason;
    the other pass's head completes as it would alone (issue 29: it used to take the whole group
    down), and no thread is left running."""
    import threading

    from trainer import HeadFailed

    real = head_engine.run_epoch

    def failing(prog, heads, x, y, weight, order, batch_size, step0):
        if batch_size == 8 and step0 > 0:
            raise MemoryError("no memory for batch 8")
        return real(prog, heads, x, y, weight, order, batch_size, step0)

    monkeypatch.setattr(head_engine, "run_epoch", failing)
    before = threading.active_count()
    configs = [BASE, BASE.replace(batch_size=8)]
    healthy, failed = train_group(configs, array_dataset(tmp_path / "a"))
    assert threading.active_count() == before
    assert isinstance(failed, HeadFailed) and "out of memory at batch_size 8" in str(failed)
    monkeypatch.undo()
    assert_same(healthy, train(BASE, array_dataset(tmp_path / "alone")))


def test_passes_side_by_side_each_checkpoint_and_resume_after_an_interrupt(tmp_path, monkeypatch):
    """Interrupted mid-group, the heads of both passes resume after their last checkpointed
    epoch and end as an uninterrupted group does.

    Which epoch the other pass has reached when the interrupt comes is set by the test, not by
    the machine's speed: the batch-16 pass (head 0) computes its 3rd epoch only once head 1 has
    reported its 2nd, and the batch-8 pass (head 1) computes its 3rd only once the interrupt is
    raised; so head 1 has exactly 2 epochs checkpointed."""
    import threading

    from trainer import settings

    configs = [BASE.replace(epochs=4), BASE.replace(batch_size=8, epochs=4)]
    data = array_dataset(tmp_path / "a")
    wait_s = 120  # far past any epoch; hit only if the group never gets there
    second_reported_two = threading.Event()
    interrupted = threading.Event()
    gates = {16: second_reported_two, 8: interrupted}  # each pass's gate before its 3rd epoch
    calls = {16: 0, 8: 0}  # each pass's epochs begun: its own thread's count
    stuck: list[str] = []  # a gate that timed out; failed on below, after the run
    real = head_engine.run_epoch

    def gated(prog, heads, x, y, weight, order, batch_size, step0):
        # Not raised here: an error in a pass's epoch would fail its head (HeadFailed), not
        # the test.
        calls[batch_size] += 1
        if calls[batch_size] == 3 and not gates[batch_size].wait(wait_s):
            stuck.append(f"the batch-{batch_size} pass waited {wait_s} s for its 3rd epoch")
            for gate in gates.values():  # let the other pass go too: the group ends
                gate.set()
        return real(prog, heads, x, y, weight, order, batch_size, step0)

    def stop_late(index, epoch, metrics):
        if index == 1 and epoch == 2:
            second_reported_two.set()
        if index == 0 and epoch == 3:
            interrupted.set()
            raise KeyboardInterrupt

    try:
        with (monkeypatch.context() as patch, settings.override(FER_SEARCH_CHECKPOINT_S=0),
              pytest.raises(KeyboardInterrupt)):
            patch.setattr(head_engine, "run_epoch", gated)
            train_group(configs, data, stop_late)
    finally:  # no pass is left waiting on a gate, whatever happened
        for gate in gates.values():
            gate.set()
    assert not stuck, stuck
    assert calls[16] == 3
    resumed = train_group(configs, data)
    # The interrupted head's epoch 3 was stored and checkpointed before its callback; the other
    # pass had stored and checkpointed its epochs 1 and 2 (its 3rd, begun after the interrupt,
    # was never handed over).
    assert resumed[0].resumed_from_epoch == 3
    assert resumed[1].resumed_from_epoch == 2
    full = train_group(configs, array_dataset(tmp_path / "b"))
    for got, want in zip(resumed, full, strict=True):
        np.testing.assert_array_equal(got.top_weights[0], want.top_weights[0])
        assert got.history == want.history
