"""Process-wide TensorFlow settings: oneDNN, log noise, thread pools, determinism.

These must be set before TensorFlow starts, so `trainer/__init__.py` calls `prepare_environment`
before anything imports Keras.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from trainer import settings

T = TypeVar("T")
R = TypeVar("R")

_configured: tuple[int, int] | None = None  # (intra-op, inter-op) threads set
_planned: tuple[int | None, bool] = (None, False)  # `defer_tensorflow`'s, used when it starts
# Optional extras Keras imports eagerly if installed, for features this project never uses (the
# scikit-learn wrappers, an image-gallery plot); hidden while Keras loads, they cost ~1 s of
# start-up (scikit-learn pulls in SciPy; matplotlib.pyplot its backends).
_UNUSED_BY_KERAS = ("sklearn", "matplotlib")


def prepare_environment() -> None:
    """Sets defaults the user has not set: oneDNN on (about 2x VGG16 training speed on the AMD CPUs
    measured here), TensorFlow's C++ info/warning logs off, Keras on the TensorFlow backend."""
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def set_threads(threads: int | None, *, ops_in_parallel: bool = False) -> None:
    """Sizes TensorFlow's thread pools (e.g. one core per worker when several share a machine).

    Args:
        threads: cores to use (None: TensorFlow's default, all of them).
        ops_in_parallel: run each op on one thread and up to `threads` ops at once (inter-op
            parallelism), instead of splitting each op over `threads` (intra-op). For work made
            of many small independent ops: the head engine's k heads per batch ran ~25% faster
            so on 2 cores, where splitting each small matmul and Adam update cost more than it
            gave; feature extraction and `predict_proba` then run `threads` batches at once
            (`side_by_side`), ~15% faster than one batch split over 2 cores. Not for Keras
            `fit` (fine-tuning): its ops run one after another.

    Must run before TensorFlow executes its first op; later calls with another value are ignored by
    TensorFlow, so they raise instead of silently doing nothing.
    """
    global _configured
    if threads is None and not ops_in_parallel:
        return
    cores = threads or os.cpu_count() or 1
    split, unsplit = (cores, max(1, min(2, cores))), (1, cores)  # (intra-op, inter-op)
    pools = unsplit if ops_in_parallel else split
    if _configured == pools or (threads is not None and _configured in (split, unsplit)):
        return  # that many cores already, either way (the way is a speed preference)
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(pools[0])
        tf.config.threading.set_inter_op_parallelism_threads(pools[1])
    except RuntimeError as exc:  # TensorFlow already initialised
        raise RuntimeError(
            f"TensorFlow's threads must be set before it starts (asked for {threads}, "
            f"ops_in_parallel={ops_in_parallel})"
        ) from exc
    _configured = pools


def parallel_batches() -> int:
    """How many batches `side_by_side` runs at once: the inter-op threads when each op runs on
    one thread (`set_threads(ops_in_parallel=True)`), else 1."""
    if _configured is None or _configured[0] != 1:
        return 1
    return _configured[1]


def side_by_side(function: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """`[function(item) for item in items]`, `parallel_batches()` items at a time (threads: each
    runs TensorFlow ops, which release the GIL); results in order, the first error raised."""
    items = list(items)
    workers = parallel_batches()
    if workers <= 1 or len(items) <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(min(workers, len(items))) as pool:
        return list(pool.map(function, items))


def defer_tensorflow(threads: int | None, *, ops_in_parallel: bool = False) -> None:
    """TensorFlow starts when a training first needs it (`load_tensorflow`, called by the
    package's lazy names for the modules that import it), sized by `set_threads(threads,
    ops_in_parallel=...)` then: a study reaches its first trial without waiting for the ~2-3 s
    import, and a command that stops before training never pays it. (A trial answered from its
    epoch record still loads it: `trainer.train`'s module imports TensorFlow.)"""
    global _planned
    if "tensorflow" in sys.modules:
        # Already running (tests): the same core count, or an error; the way stays as it is.
        set_threads(threads)
        return
    _planned = (threads, ops_in_parallel)


def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and TensorFlow, and makes TensorFlow's ops deterministic, so the same
    config and seed give the same metrics."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if not getattr(seed_everything, "_deterministic", False):
        tf.config.experimental.enable_op_determinism()
        seed_everything._deterministic = True  # type: ignore[attr-defined]


def load_tensorflow(quiet: bool = True, threads: int | None = None) -> None:
    """Imports TensorFlow now, keeping its native start-up chatter (oneDNN, CUDA probes) off the
    terminal unless FER_SEARCH_TF_LOGS=1; Python-level errors still surface as exceptions.
    `threads` sizes its thread pools (`set_threads`) before its first op, the last moment it can
    (None: the value given to `defer_tensorflow`, if any).

    TensorFlow writes those lines from C++ before its logging is initialised, so no environment
    variable silences them; the only way is to point file descriptor 2 elsewhere meanwhile.
    """
    if "tensorflow" in sys.modules:
        return
    planned_threads, ops_in_parallel = _planned
    threads = planned_threads if threads is None else threads
    quiet = quiet and not settings.tf_logs()
    saved = None
    if quiet:
        sys.stderr.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    try:
        with _hidden(_UNUSED_BY_KERAS):
            import keras  # noqa: F401  (TensorFlow imports it too; either way, under the guard)
            import tensorflow as tf

        set_threads(threads, ops_in_parallel=ops_in_parallel)
        tf.constant(0)  # the CUDA probe runs on first use, not on import
        # Retracing notices are expected: trainings of new shapes trace new functions.
        tf.get_logger().setLevel("ERROR")
    finally:
        if saved is not None:
            os.dup2(saved, 2)
            os.close(saved)


@contextlib.contextmanager
def _hidden(names: tuple[str, ...]) -> Iterator[None]:
    """Makes ``import NAME`` raise ImportError for the block (modules already imported stay
    visible), then makes them importable again: `trainer.data.loading.class_weights` still imports
    scikit-learn when a study asks for balanced class weights."""
    hidden = [name for name in names if name not in sys.modules]
    for name in hidden:
        sys.modules[name] = None  # type: ignore[assignment]  (the import system's "not found")
    try:
        yield
    finally:
        for name in hidden:
            if sys.modules.get(name, 0) is None:
                del sys.modules[name]
