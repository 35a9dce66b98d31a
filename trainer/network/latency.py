"""Measuring one model's costs by a stated protocol: its latency per face at batch 1 and 32, its
parameter count and the size of its `.keras` file. No cache here (`trainer.costs` keeps one per
shape and machine); this module only measures, on the machine and threads it runs on.

The protocol, recorded with every measurement (`Measured.protocol`):

- the model is the exported one (`build_network(config).full`: raw uint8 RGB in, probabilities
  out, what `export` writes and `serve` runs), timed with `predict_on_batch`;
- per batch size, `warm-up` calls first (the first traces the predict function for that batch
  shape, the next ones settle oneDNN's primitive caches and the allocator), then `repeats` calls,
  each timed alone with `time.perf_counter`; the statistic is the median call, divided by the
  batch size (ms per face);
- TensorFlow's threads are whatever `trainer.runtime` set for training in this process.

Why `predict_on_batch` and not `model(x, training=False)`: the latter runs the graph eagerly, op
by op, and Python's dispatch of ~25 layers dominated batch 1 (89 against 31 ms per face at
48 px on the 2-core AMD development machine; 39 against 26 ms at batch 32). `predict_on_batch`
runs Keras' compiled predict function (a `tf.function`; Keras compiles no XLA on a CPU-only
machine), as fast as wrapping the call in a `tf.function` ourselves, and is the call
`predict_proba` and serving make. Its copy of the output to numpy is part of what a caller pays.
"""

from __future__ import annotations

import os
import platform
import statistics
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path

import keras
import numpy as np

from trainer.config import TrainConfig
from trainer.network.export import save_model
from trainer.network.model import build_network


@dataclass(frozen=True)
class Protocol:
    """How latency is measured: per batch size, calls made untimed then timed (median kept)."""

    batches: tuple[tuple[int, int, int], ...] = ((1, 5, 25), (32, 2, 5))
    """(batch size, warm-up calls, timed calls). Batch 1 is cheap (~30 ms a call at 48 px on
    the 2-core development machine), so more repeats buy a steadier median for under a second;
    batch 32 costs ~1 s a call there, so 2 + 5 calls keep a measurement near 10 s at 64 px."""
    version: int = 1
    """Raised when the protocol changes, so that numbers measured the old way are re-measured."""

    def describe(self) -> str:
        return ", ".join(f"batch {b}: {w} warm-up + median of {r} calls"
                         for b, w, r in self.batches)


PROTOCOL = Protocol()


@dataclass(frozen=True)
class Measured:
    """One measurement of one model (see the module's docstring for the protocol)."""

    latency_ms: dict[int, float]  # batch size -> median ms per face
    params: int
    size_mb: float
    protocol: str


def measure(config: TrainConfig, protocol: Protocol) -> Measured:
    """Builds the full exported network of `config` and measures it. Its weights do not matter
    to any of the costs (the `.keras` zip stores its members uncompressed, so the size is the
    same for any weights), so a `weights: none` base is built: nothing is downloaded or read."""
    model = build_network(config.replace(weights="none")).full
    params = int(model.count_params())
    with tempfile.TemporaryDirectory(prefix="fer-costs-") as folder:
        path = save_model(model, Path(folder) / "model.keras")
        size_mb = path.stat().st_size / 1e6
    load = _load_average()
    rng = np.random.default_rng(0)
    latency = {}
    for batch, warm_up, repeats in protocol.batches:
        faces = rng.integers(0, 256, (batch, config.image_size, config.image_size, 3),
                             dtype=np.uint8)
        latency[batch] = 1000 * statistics.median(call_seconds(model, faces, warm_up, repeats))
        latency[batch] /= batch
    line = (f"predict_on_batch on random uint8 faces, {protocol.describe()}; {machine()}; "
            f"load average {load} at start")
    return Measured(latency_ms=latency, params=params, size_mb=size_mb, protocol=line)


def call_seconds(model: keras.Model, faces: np.ndarray, warm_up: int, repeats: int
                 ) -> list[float]:
    """Seconds of each of `repeats` timed `predict_on_batch(faces)` calls, after `warm_up`
    untimed ones."""
    for _ in range(warm_up):
        model.predict_on_batch(faces)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model.predict_on_batch(faces)
        seconds.append(time.perf_counter() - start)
    return seconds


def machine() -> str:
    """What a latency depends on besides the model, in one line: the CPU model, the cores this
    process may use, TensorFlow's version and its thread pools (as `trainer.runtime` set them;
    "default": TensorFlow's own choice, by the cores). Part of the costs cache's key."""
    import tensorflow as tf

    intra = tf.config.threading.get_intra_op_parallelism_threads() or "default"
    inter = tf.config.threading.get_inter_op_parallelism_threads() or "default"
    return (f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores; "
            f"TensorFlow {metadata.version('tensorflow')}, threads intra-op {intra} "
            f"inter-op {inter}")


@cache
def cpu_model() -> str:
    """The CPU's model name, with its family and model numbers where the name alone is vague
    (a cloud AMD says only "AMD EPYC", whatever its generation)."""
    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "cpu family", "model") and key not in fields:
                fields[key] = value.strip()
            if not line.strip() and fields:
                break  # the first processor's block is enough
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return name


def _load_average() -> str:
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"
