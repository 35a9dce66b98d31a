"""`dropout` is free inside a group (issue 20): heads differing in it, each with its own rate and
mask stream, train in one pass, and each equals itself trained alone bit for bit."""

from __future__ import annotations

from tests.trainer.arrays import array_dataset
from tests.trainer.test_group_train import assert_same
from trainer import TrainConfig, batch_key, train
from trainer.heads import engine as head_engine
from trainer.heads.group_train import train_group
from trainer.heads.grouping import track_key
from trainer.heads.head_config import HeadConfig

BASE = TrainConfig(weights="none", image_size=32, epochs=3, batch_size=16, head_width=32,
                   learning_rate=3e-3, dropout=0.3)
# Off, three rates at one width (one program serves them all), one rate at another width.
MEMBERS = [
    BASE.replace(dropout=0.0),
    BASE,
    BASE.replace(dropout=0.55),
    BASE.replace(dropout=0.1, learning_rate=1e-2),
    BASE.replace(dropout=0.45, head_width=16),
]


def test_configs_differing_in_dropout_are_one_group_of_separate_heads():
    assert len({batch_key(c) for c in MEMBERS}) == 1
    assert len({track_key(c) for c in MEMBERS}) == len(MEMBERS)


def test_heads_differing_in_dropout_train_in_one_pass_each_equal_to_alone(tmp_path):
    head_engine.clear_programs()
    together = train_group(MEMBERS, array_dataset(tmp_path / "group"))
    # One program for the whole group: the rates are fed, not compiled in.
    assert len(head_engine._programs) == 1
    for i, config in enumerate(MEMBERS):
        alone = train(config, array_dataset(tmp_path / f"alone{i}"))
        assert_same(together[i], alone)
    # Each rate acts: heads equal but for dropout end with different weights and losses.
    assert len({r.history[-1]["loss"] for r in together[:3]}) == 3


def test_a_program_compiled_for_some_rates_serves_others(tmp_path):
    """A random search draws a new rate per trial: it must not trace a program per rate."""
    head_engine.clear_programs()
    first = train(BASE.replace(dropout=0.2), array_dataset(tmp_path / "a"))
    second = train(BASE.replace(dropout=0.4), array_dataset(tmp_path / "b"))
    assert len(head_engine._programs) == 1
    assert first.history != second.history


def test_dropout_on_or_off_keys_the_program_and_its_value_keys_the_keras_head():
    off, low, high = (HeadConfig.from_config(BASE.replace(dropout=d)) for d in (0.0, 0.2, 0.4))
    assert low.program_key() == high.program_key() != off.program_key()
    assert low.build_key() != high.build_key()  # Keras' Dropout layer bakes its rate in
