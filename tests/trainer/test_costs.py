"""trainer.costs: a model's latency, parameters and size, measured once per shape and machine and
cached under `<cache_dir>/costs/`. One test measures for real (a 32 px model, a short protocol);
the others put a counting fake in place of the measurement. No timing is asserted: latencies are
only checked to be positive numbers."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trainer.test_cache_lock import Race
from trainer import COST_NAMES, ModelCosts, TrainConfig, TrainerError, model_costs, shape_key
from trainer.costs import NOT_SHAPE_FIELDS, SHAPE_FIELDS
from trainer.network import latency
from trainer.network.export import save_model
from trainer.network.model import build_network

REPO = Path(__file__).resolve().parents[2]
CONFIG = TrainConfig(weights="none", image_size=32, head_width=16)
# VGG16 without its top: 13 conv layers, 14,714,688 weights; then Dense(16) on 512 pooled
# features and the 7-way softmax.
VGG16_NOTOP_PARAMS = 14_714_688
HEAD_PARAMS = 512 * 16 + 16 + 16 * 7 + 7


class CountingMeasure:
    """Stands for `latency.measure`: counts its calls, answers fixed numbers."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, config: TrainConfig, protocol: latency.Protocol) -> latency.Measured:
        self.calls.append(shape_key(config))
        return latency.Measured(latency_ms={1: 2.5, 32: 1.25}, params=1000, size_mb=0.5,
                                protocol="fake")


@pytest.fixture
def measure(monkeypatch) -> CountingMeasure:
    fake = CountingMeasure()
    monkeypatch.setattr(latency, "measure", fake)
    return fake


SHORT = ((1, 1, 3), (32, 1, 2))  # the protocol's kind, fewer calls
MEASURE_ALONE = """
import json, sys
from trainer import TrainConfig, model_costs
from trainer.network import latency
latency.PROTOCOL = latency.Protocol(batches=%r)
costs = model_costs(TrainConfig(**json.loads(sys.argv[1])), sys.argv[2])
print(json.dumps({"costs": costs.__dict__, "tensorflow": "tensorflow" in sys.modules}))
"""


def test_the_four_costs_are_measured_positive_and_match_the_model(tmp_path, monkeypatch):
    # In a process of its own, to see that the caller never starts TensorFlow: the measuring
    # process does. Fewer calls than the protocol's: this checks the numbers' meaning, not
    # their spread (benchmarks/latency_spread.py).
    shape = {name: getattr(CONFIG, name) for name in SHAPE_FIELDS} | {"weights": "none"}
    out = subprocess.run([sys.executable, "-c", MEASURE_ALONE % (SHORT,), json.dumps(shape),
                          str(tmp_path)], capture_output=True, text=True, check=True, cwd=REPO)
    answer = json.loads(out.stdout.strip().splitlines()[-1])
    assert answer["tensorflow"] is False
    costs = ModelCosts(**answer["costs"])

    for name in ("latency_ms_b1", "latency_ms_b32"):
        value = getattr(costs, name)
        assert isinstance(value, float) and math.isfinite(value) and value > 0, (name, value)
    model = build_network(CONFIG).full
    assert costs.params == model.count_params() == VGG16_NOTOP_PARAMS + HEAD_PARAMS
    saved = save_model(model, tmp_path / "same.keras")
    assert costs.size_mb == pytest.approx(saved.stat().st_size / 1e6, rel=1e-3)
    assert costs.size_mb == pytest.approx(costs.params * 4 / 1e6, rel=0.02)  # float32 weights
    for part in ("CPU time of predict_on_batch", "batch 1: 1 warm-up + median of 3",
                 "batch 32: 1 warm-up + median of 2", "intra-op 1, inter-op 1", "TensorFlow 2",
                 latency.cpu_model()):
        assert part in costs.protocol, (part, costs.protocol)
    assert "\n" not in costs.protocol
    assert COST_NAMES == ("latency_ms_b1", "latency_ms_b32", "params", "size_mb")
    monkeypatch.setattr(latency, "PROTOCOL", latency.Protocol(batches=SHORT))
    monkeypatch.setattr(latency, "measure", None)  # read, never measured again
    assert model_costs(CONFIG, tmp_path) == costs  # what the other process measured


def test_the_second_call_reads_the_cache_without_measuring(tmp_path, measure):
    first = model_costs(CONFIG, tmp_path)
    second = model_costs(CONFIG.replace(learning_rate=0.1, seed=3, epochs=2), tmp_path)
    assert measure.calls == [shape_key(CONFIG)]
    assert first == second == ModelCosts(latency_ms_b1=2.5, latency_ms_b32=1.25, params=1000,
                                         size_mb=0.5, protocol="fake")
    [entry] = (tmp_path / "costs").glob("*.json")
    assert json.loads(entry.read_text())["costs"] == dataclasses.asdict(first)


def test_another_shape_is_measured_apart(tmp_path, measure):
    model_costs(CONFIG, tmp_path)
    model_costs(CONFIG.replace(head_width=64), tmp_path)
    model_costs(CONFIG.replace(image_size=48), tmp_path)
    assert len(measure.calls) == 3
    assert len(list((tmp_path / "costs").glob("*.json"))) == 3


def test_configs_differing_only_in_training_settings_share_a_key():
    trained_otherwise = CONFIG.replace(
        learning_rate=0.05, batch_size=8, epochs=3, seed=7, dropout=0.1, trainable_blocks=2,
        weights="imagenet", class_weight="balanced", weight_decay=1e-4, label_smoothing=0.1,
        early_stopping_patience=2, augment=True)
    assert shape_key(CONFIG) == shape_key(trained_otherwise)
    assert shape_key(CONFIG) == shape_key(CONFIG.replace(learning_rate=0.5))


@pytest.mark.parametrize("change", [{"head_width": 32}, {"image_size": 48},
                                    {"pooling": "flatten"}, {"activation": "gelu"},
                                    {"precision": "mixed_bfloat16"}])
def test_a_shape_setting_changes_the_key(change):
    assert shape_key(CONFIG) != shape_key(CONFIG.replace(**change))


def test_every_config_field_is_placed_as_shape_or_not():
    """A new TrainConfig field must be judged: does it change the exported network?"""
    assert not set(SHAPE_FIELDS) & set(NOT_SHAPE_FIELDS)
    assert sorted([*SHAPE_FIELDS, *NOT_SHAPE_FIELDS]) == sorted(TrainConfig.field_names())


@pytest.mark.parametrize("content", [
    "",
    '{"key": "cut off',
    "[1, 2]",
    None,  # the stored costs, with params made negative
    "other key",  # the stored costs, under another key
])
def test_an_unusable_cache_file_is_measured_again_not_a_crash(tmp_path, measure, content,
                                                               caplog):
    model_costs(CONFIG, tmp_path)
    [entry] = (tmp_path / "costs").glob("*.json")
    stored = json.loads(entry.read_text())
    original_key = stored["key"]
    if content is None:
        stored["costs"]["params"] = -5
        content = json.dumps(stored)
    elif content == "other key":
        content = json.dumps({**stored, "key": "image_size=999"})
    entry.write_text(content)

    again = model_costs(CONFIG, tmp_path)
    assert len(measure.calls) == 2
    assert again.params == 1000
    assert f"model costs file {entry}" in caplog.text and "measuring again" in caplog.text
    rewritten = json.loads(entry.read_text())
    assert rewritten["key"] == original_key and rewritten["costs"]["params"] == 1000
    assert model_costs(CONFIG, tmp_path) == again and len(measure.calls) == 2  # rewritten


def test_two_workers_asking_at_once_measure_once(tmp_path, measure, monkeypatch):
    race = Race()
    monkeypatch.setattr(latency, "measure", race.wrap(measure))
    first, second = race.run(lambda: model_costs(CONFIG, tmp_path, cache_lock=race.lock))
    assert race.builds == ["first"] and len(measure.calls) == 1
    assert first == second
    assert race.requested[0].startswith("costs-")


def test_the_cache_key_names_the_cpu_and_tensorflow():
    line = latency.machine()
    assert latency.cpu_model() in line and "TensorFlow" in line


def test_a_failed_measurement_is_one_line_naming_why(tmp_path, monkeypatch):
    monkeypatch.setattr(latency, "child_command", lambda request: [
        sys.executable, "-c", "import sys; sys.stderr.write('noise\\nout of memory\\n'); "
        "sys.exit(3)"])
    with pytest.raises(TrainerError) as info:
        model_costs(CONFIG, tmp_path)
    assert str(info.value) == ("measuring the model costs of image_size 32 failed (exit 3): "
                               "out of memory")
    assert not list((tmp_path / "costs").glob("*.json"))


def test_shape_key_and_cost_names_need_no_tensorflow():
    probe = ("import sys, trainer\n"
             "trainer.shape_key(trainer.TrainConfig()), trainer.COST_NAMES, trainer.ModelCosts\n"
             "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, cwd=REPO)
    assert out.stdout.strip() == "False", out.stderr
