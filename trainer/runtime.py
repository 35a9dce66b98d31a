"""Process-wide TensorFlow settings: oneDNN, log noise, thread pools, determinism.

These must be set before TensorFlow starts, so `trainer/__init__.py` calls `prepare_environment`
before anything imports Keras.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator

_configured_threads: int | None = None
_planned_threads: int | None = None  # `defer_tensorflow`'s, used when TensorFlow starts
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


def set_threads(threads: int | None) -> None:
    """Sizes TensorFlow's thread pools (e.g. one core per worker when several share a machine).

    Must run before TensorFlow executes its first op; later calls with another value are ignored by
    TensorFlow, so they raise instead of silently doing nothing.
    """
    global _configured_threads
    if threads is None or threads == _configured_threads:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
    except RuntimeError as exc:  # TensorFlow already initialised
        raise RuntimeError(
            f"TensorFlow's threads must be set before it starts (asked for {threads})"
        ) from exc
    _configured_threads = threads


def defer_tensorflow(threads: int | None) -> None:
    """TensorFlow starts when a training first needs it (`load_tensorflow`, called by the
    package's lazy names for the modules that import it), sized to `threads` then: a study
    reaches its first trial without waiting for the ~2-3 s import, and a command that stops
    before training never pays it. (A trial answered from its epoch record still loads it:
    `trainer.train`'s module imports TensorFlow.)"""
    global _planned_threads
    if "tensorflow" in sys.modules:
        set_threads(threads)  # already running (tests): the same value, or an error
        return
    _planned_threads = threads


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
    threads = _planned_threads if threads is None else threads
    quiet = quiet and os.environ.get("FER_SEARCH_TF_LOGS", "") in ("", "0")
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

        set_threads(threads)
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
    visible), then makes them importable again: `trainer.loading.class_weights` still imports
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
