"""A configuration's model costs: what its exported model costs to run and to ship, for studies
that trade accuracy against speed (issue 32: objectives and constraints).

Costs depend on the network's shape, not on its weights, nor on how it was trained: they are
measured once per `shape_key`, machine (CPU model, TensorFlow version) and protocol, in a fresh
process on one thread (`trainer.network.latency` says how and why), and kept as a small JSON file
under `<cache_dir>/costs/`, written atomically under the cache entry's lock, as the features are,
so two workers never measure one shape at once and the second reads the first's.

Nothing here starts TensorFlow in the caller's process: `COST_NAMES` and `shape_key` serve a
spec's checks, and `model_costs` measures in a process of its own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from trainer.config import TrainConfig
from trainer.files.atomic import atomic_write_bytes
from trainer.files.cache_lock import CacheLock, entry_lock, record_build, refresh
from trainer.network import latency  # TensorFlow-free: its measuring process starts TensorFlow

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCosts:
    """What one model shape costs on the machine that measured it.

    Attributes:
        latency_ms_b1: median ms per face, batch of 1, the exported full model (raw RGB in):
            one thread's CPU time, so the latency on one free core of this CPU (`protocol`).
        latency_ms_b32: median ms per face, batch of 32 (the batch's time / 32), likewise.
        params: parameter count of the full model (VGG16's base + the head).
        size_mb: size of the exported `.keras` file in MB (1e6 bytes).
        protocol: one line: how the latencies were measured (warm-up, repeats, statistic,
            threads), the machine (CPU model), TensorFlow's version, the load at the time.
    """

    latency_ms_b1: float
    latency_ms_b32: float
    params: int
    size_mb: float
    protocol: str


COST_NAMES = ("latency_ms_b1", "latency_ms_b32", "params", "size_mb")
"""The costs a study spec may name as an objective or a constraint (`ModelCosts`' numbers)."""

SHAPE_FIELDS = ("image_size", "pooling", "head_width", "activation", "precision")
"""The `TrainConfig` fields that change the exported network's layers, their sizes or what they
compute: input side (every conv's work), pooling (`flatten` feeds the head a wider vector),
hidden width, the hidden activation's arithmetic, the conv layers' dtype policy."""

NOT_SHAPE_FIELDS = {
    "trainable_blocks": "where training stops; the exported network is the same chain",
    "weights": "values, not shapes (and the .keras zip is stored uncompressed)",
    "dropout": "Dropout is the identity at inference, whatever its rate",
    "augment": "flips only the training faces; the exported model has no flip layer",
    "learning_rate": "training only", "batch_size": "training only", "epochs": "training only",
    "class_weight": "training only", "early_stopping_patience": "training only",
    "seed": "training only", "weight_decay": "training only", "label_smoothing": "training only",
}
"""Every other field, and why it leaves the costs alone (a test checks that each field of
`TrainConfig` is in exactly one of the two: a new field must be placed)."""


def shape_key(config: TrainConfig) -> str:
    """What decides `config`'s costs on a given machine, e.g. ``image_size=48|pooling=avg|...``:
    configs with equal keys have equal costs."""
    return "|".join(f"{name}={getattr(config, name)}" for name in SHAPE_FIELDS)


def model_costs(config: TrainConfig, cache_dir: str | Path, *,
                cache_lock: CacheLock | None = None) -> ModelCosts:
    """`config`'s model costs on this machine, measured once per shape, machine and protocol (in
    a fresh process, ~10-20 s) and then read from `<cache_dir>/costs/`.

    Args:
        config: the configuration; only its `SHAPE_FIELDS` matter.
        cache_dir: the cache folder (the one crops and features use).
        cache_lock: the lock that machines sharing `cache_dir` all see (as for the feature cache,
            `trainer.files.cache_lock`); None: a file lock beside the entry.

    Raises:
        TrainerError: the measuring process failed (one line: why).
    """
    key = "\n".join([shape_key(config), latency.machine(), f"protocol {latency.PROTOCOL}"])
    digest = hashlib.sha256(key.encode()).hexdigest()[:24]
    folder = Path(cache_dir) / "costs"
    path = folder / f"{digest}.json"
    found = _read(path, key)
    if found is not None:
        return found
    folder.mkdir(parents=True, exist_ok=True)
    with entry_lock(cache_lock, f"costs-{digest}", path.with_suffix(".lock")):
        refresh(folder)  # another worker may have measured it while we waited (NFS: see refresh)
        found = _read(path, key)
        if found is not None:
            return found
        record_build("costs", digest)
        logger.info("measuring the model costs of %s", shape_key(config))
        measured = latency.measure(config, latency.PROTOCOL)
        costs = ModelCosts(latency_ms_b1=measured.latency_ms[1],
                           latency_ms_b32=measured.latency_ms[32], params=measured.params,
                           size_mb=measured.size_mb, protocol=measured.protocol)
        entry = {"key": key, "costs": asdict(costs)}
        atomic_write_bytes(path, (json.dumps(entry, indent=1) + "\n").encode())
    return costs


def _read(path: Path, key: str) -> ModelCosts | None:
    """The costs stored at `path` for `key`, or None when there are none or they are unusable
    (a cut-off or hand-edited file, another key): those are measured again and overwritten."""
    try:
        entry = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        logger.warning("model costs file %s is unreadable (%s); measuring again", path, exc)
        return None
    try:
        if entry["key"] != key:
            raise ValueError("it was written for another shape or machine")
        costs = ModelCosts(**entry["costs"])
        _check(costs)
    except (KeyError, TypeError, ValueError) as exc:
        logger.warning("model costs file %s is not usable (%s); measuring again", path, exc)
        return None
    return costs


def _check(costs: ModelCosts) -> None:
    for field in fields(ModelCosts):
        value = getattr(costs, field.name)
        if field.name == "protocol":
            if not isinstance(value, str) or not value:
                raise ValueError("protocol: expected a line of text")
            continue
        kind = int if field.name == "params" else (int, float)
        if (isinstance(value, bool) or not isinstance(value, kind)
                or not math.isfinite(value) or value <= 0):
            raise ValueError(f"{field.name}: expected a positive number, found {value!r}")
