"""Measuring one model's costs by a stated protocol: its latency per face at batch 1 and 32, its
parameter count and the size of its `.keras` file. No cache here (`trainer.costs` keeps one per
shape and machine); this module only measures.

The protocol, recorded with every measurement (`Measured.protocol`):

- a fresh Python process (`python -m trainer.network.latency`), TensorFlow started there on one
  thread (`runtime.load_tensorflow(threads=1)`: intra-op 1, inter-op 1);
- the model is the exported one (`build_network(config).full`: raw uint8 RGB in, probabilities
  out, what `export` writes and `serve` runs), with a `weights: none` base, timed with
  `predict_on_batch`;
- per batch size, warm-up calls first (the first traces the predict function for that batch
  shape, the next settle oneDNN's primitive caches and the allocator), then timed calls, each
  timed alone by the process's CPU time; the statistic is the median call, divided by the batch
  size: one core's milliseconds per face.

Why CPU time on one thread, in its own process, and not the wall time of the study's process:
the wall-clock median under a study's thread settings moved by 42-141% between 5 runs on the
shared 2-core development machine (`benchmarks/results/latency-spread.md` at a88ffdc: other
processes took the cores half the time), and neither the fastest call nor the lower quartile
was steadier. A process's CPU time counts only the time it ran, so others' load leaves it
alone; with one thread it is the latency the model has on one free core of this CPU (with k
free cores, a batch can run up to k times faster). Its own process also keeps the measurement
apart from the study's: its thread plan (a heads-only study runs one thread per op, a
fine-tuning one splits ops over the cores: the same model would get two latencies), its Keras
state and its random seeds (building a network seeds them).

Why `predict_on_batch` and not `model(x, training=False)`: the latter runs the graph eagerly, op
by op, and Python's dispatch of ~25 layers dominated batch 1 (89 against 31 ms per face at 48 px
on the development machine). `predict_on_batch` runs Keras' compiled predict function (a
`tf.function`; Keras compiles no XLA on a CPU-only machine), as fast as a `tf.function` of our
own, and is the call `predict_proba` and serving make.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from importlib import metadata
from pathlib import Path

from trainer.config import TrainConfig
from trainer.errors import TrainerError

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding `trainer/`
CHILD_TIMEOUT_S = 900  # a safety net: ~15 s at 64 px on the development machine


@dataclass(frozen=True)
class Protocol:
    """How latency is measured: per batch size, calls made untimed, then timed (median kept)."""

    batches: tuple[tuple[int, int, int], ...] = ((1, 3, 15), (32, 2, 3))
    """(batch size, warm-up calls, timed calls). One thread's CPU time moved by ~1-3% between
    runs even under load (`benchmarks/results/latency-spread.md`), so few calls suffice: a
    measurement takes ~12 s at 48 px and ~20 s at 64 px on the 2-core development machine,
    TensorFlow's start in the fresh process included."""
    threads: int = 1
    version: int = 2
    """Raised when the protocol changes, so that numbers measured the old way are measured
    again (1: wall-clock time in the study's process, under its threads)."""

    def describe(self) -> str:
        calls = ", ".join(f"batch {b}: {w} warm-up + median of {r} calls"
                          for b, w, r in self.batches)
        return (f"process CPU time of predict_on_batch on random uint8 faces, {calls}, "
                f"{self.threads} TensorFlow thread(s), in a fresh process")


PROTOCOL = Protocol()


@dataclass(frozen=True)
class Measured:
    """One measurement of one model (see the module's docstring for the protocol)."""

    latency_ms: dict[int, float]  # batch size -> median ms per face
    params: int
    size_mb: float
    protocol: str
    calls: dict[int, list[tuple[float, float]]] = field(default_factory=dict)
    """Batch size -> (CPU seconds, wall seconds) of each timed call: for benchmarks."""


def measure(config: TrainConfig, protocol: Protocol) -> Measured:
    """Measures the exported network of `config` in a fresh process, by `protocol`.

    Raises:
        TrainerError: the measuring process failed or ran past `CHILD_TIMEOUT_S` (its last
            line of error output is in the message).
    """
    request = json.dumps({"config": config.replace(weights="none").to_dict(),
                          "protocol": asdict(protocol)})
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT),
                                                    env.get("PYTHONPATH")) if p)
    what = f"measuring the model costs of image_size {config.image_size}"
    try:
        done = subprocess.run(child_command(request), capture_output=True, text=True, env=env,
                              timeout=CHILD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise TrainerError(f"{what}: no answer after {CHILD_TIMEOUT_S} s") from None
    if done.returncode != 0 or not done.stdout.strip():
        lines = done.stderr.strip().splitlines()
        raise TrainerError(f"{what} failed (exit {done.returncode}): "
                           f"{lines[-1] if lines else 'no error output'}")
    return _from_json(json.loads(done.stdout.strip().splitlines()[-1]))


def child_command(request: str) -> list[str]:
    """The measuring process's command line (tests put a failing one in its place)."""
    return [sys.executable, "-m", "trainer.network.latency", request]


def machine() -> str:
    """What a latency depends on besides the model and the protocol, in one line: the CPU model
    and TensorFlow's version. Part of the costs cache's key. Needs no TensorFlow."""
    return f"{cpu_model()}; TensorFlow {metadata.version('tensorflow')}"


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


def _from_json(values: dict) -> Measured:
    return Measured(
        latency_ms={int(b): float(ms) for b, ms in values["latency_ms"].items()},
        params=int(values["params"]), size_mb=float(values["size_mb"]),
        protocol=str(values["protocol"]),
        calls={int(b): [tuple(c) for c in calls] for b, calls in values["calls"].items()})


def _measure_here(config: TrainConfig, protocol: Protocol) -> Measured:
    """The measuring process's work (TensorFlow already started on `protocol.threads`)."""
    import numpy as np
    import tensorflow as tf

    from trainer.network.export import save_model
    from trainer.network.model import build_network

    model = build_network(config).full
    params = int(model.count_params())
    # The .keras zip stores its members uncompressed: the size is the same for any weights.
    with tempfile.TemporaryDirectory(prefix="fer-costs-") as folder:
        size_mb = save_model(model, Path(folder) / "model.keras").stat().st_size / 1e6
    load = f"{os.getloadavg()[0]:.1f}"
    rng = np.random.default_rng(0)
    latency, calls = {}, {}
    for batch, warm_up, repeats in protocol.batches:
        faces = rng.integers(0, 256, (batch, config.image_size, config.image_size, 3),
                             dtype=np.uint8)
        calls[batch] = call_seconds(model, faces, warm_up, repeats)
        latency[batch] = 1000 * statistics.median(cpu for cpu, _ in calls[batch]) / batch
    threads = (tf.config.threading.get_intra_op_parallelism_threads(),
               tf.config.threading.get_inter_op_parallelism_threads())
    line = (f"{protocol.describe()} (intra-op {threads[0]}, inter-op {threads[1]}); "
            f"{machine()}; load average {load} at start")
    return Measured(latency_ms=latency, params=params, size_mb=size_mb, protocol=line,
                    calls=calls)


def call_seconds(model, faces, warm_up: int, repeats: int) -> list[tuple[float, float]]:
    """(CPU seconds, wall seconds) of each of `repeats` timed `predict_on_batch(faces)` calls,
    after `warm_up` untimed ones."""
    for _ in range(warm_up):
        model.predict_on_batch(faces)
    seconds = []
    for _ in range(repeats):
        cpu, wall = time.process_time(), time.perf_counter()
        model.predict_on_batch(faces)
        seconds.append((time.process_time() - cpu, time.perf_counter() - wall))
    return seconds


def _main(argv: list[str]) -> int:
    request = json.loads(argv[0])
    protocol = Protocol(**{**request["protocol"], "batches": tuple(
        tuple(b) for b in request["protocol"]["batches"])})
    config = TrainConfig.from_dict(request["config"])
    from trainer.runtime import load_tensorflow

    load_tensorflow(threads=protocol.threads)  # before Keras is imported: its pools are fixed
    print(json.dumps(asdict(_measure_here(config, protocol))))
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
