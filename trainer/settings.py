"""Every `FER_SEARCH_*` environment variable the project reads, listed once: name, default, type,
meaning, and whether it is for users or for tests.

A knob is read when it is used (`get` or its accessor below, called at that moment), never
frozen into a constant at import, so a value set after start-up (a test's `override`, a
worker's environment) is seen. A malformed value stops with one `SettingError` naming the
variable, what was expected and what was found. An unset or empty variable means its default.

Tests inject knobs in-process with `override`; tests that start subprocesses pass them in the
subprocess's environment. docs/settings.md is `markdown_table()`'s output (a test compares).

This module is the bottom floor: both `trainer` and `search` read it, so it imports nothing of
either (but trainer.errors, which imports nothing), nor optuna, mlflow or tensorflow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from trainer.errors import ConfigError

USER = "users"
TESTS = "tests"


class SettingError(ConfigError):
    """An environment variable holds a value its knob cannot use (bad input: the CLI says so in
    one line and exits 2)."""

    def __init__(self, name: str, expected: str, found: str) -> None:
        self.name = name
        super().__init__(f"environment variable {name}", expected, found)


@dataclass(frozen=True)
class Knob:
    """One environment variable: how its text becomes a value, and what it is for."""

    name: str
    default: Any
    kind: str  # the type, in words (the table's "Type" column and the error's "expected")
    parse: Callable[[str], Any]  # raises ValueError for text the knob cannot use
    meaning: str
    audience: str  # USER or TESTS


def _number(cast: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = cast(text.strip())
        if not value >= minimum:  # also refuses nan
            raise ValueError(text)
        return value

    return parse


def _flag(text: str) -> bool:
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    return words[text.strip().lower()]  # KeyError is a LookupError: caught as malformed


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(text)
        return text.strip()

    return parse


def _text(text: str) -> str:
    return text


_SECONDS = "seconds (a number >= 0)"
KNOBS: dict[str, Knob] = {knob.name: knob for knob in [
    # ------------------------------------------------------------------------------ for users
    Knob("FER_SEARCH_STORAGE", None, "URL", _text,
         "Optuna storage URL when no --storage flag is given (then the spec's `storage`, then "
         "sqlite:///studies/optuna.db). Keeps a password off the command line.", USER),
    Knob("FER_SEARCH_CACHE_DIR", None, "a folder", _text,
         "The crop and feature cache folder when no --cache-dir flag is given (then the spec's "
         "`data.cache_dir`). Point every worker at one shared folder (a ReadWriteMany volume, "
         "NFS): each crop cache and feature set is then built once for all of them, under a lock "
         "held by the study's storage.", USER),
    Knob("FER_SEARCH_DB_PASSWORD_FILE", None, "a file", _text,
         "Read by the image's entrypoint (deploy/docker/fer-search-secrets.sh), not by Python: "
         "the database role's password, from a mounted Secret; written into a private libpq "
         "password file (PGPASSFILE), so no storage URL carries the password.", USER),
    Knob("FER_SEARCH_RUNTIME_DIR", None, "a folder", _text,
         "Read by the image's entrypoints (deploy/docker, deploy/mlflow), not by Python: where "
         "they write the password file and MLflow's auth settings (default /tmp/fer-search; an "
         "emptyDir where the root file system is read-only).", USER),
    Knob("FER_SEARCH_DB_RETRY_S", 300.0, _SECONDS, _number(float, 0),
         "How long a worker retries a storage call through a database outage before it exits 1.",
         USER),
    Knob("FER_SEARCH_HEARTBEAT_S", 10, "whole seconds (>= 1)", _number(int, 1),
         "How often a worker beats each running trial's heartbeat. Keep it well under "
         "FER_SEARCH_GRACE_S.", USER),
    Knob("FER_SEARCH_GRACE_S", 60, "whole seconds (>= 1)", _number(int, 1),
         "A trial whose heartbeat is silent this long is taken for a dead worker's: failed and "
         "re-queued.", USER),
    Knob("FER_SEARCH_TIMEOUT_GRACE_S", 300.0, _SECONDS, _number(float, 0),
         "The least time past a trial's `trial_timeout` before the watchdog ends a worker whose "
         "trial is stuck inside an epoch (exit 75); at least twice its longest epoch.", USER),
    Knob("FER_SEARCH_MAX_GROUP", 8, "a whole number (>= 1)", _number(int, 1),
         "At most this many heads trained together in one pass by one worker (grid studies).",
         USER),
    # Unset: 8 for random (like FER_SEARCH_MAX_GROUP: a batch of a study shaped like
    # studies/expw-random.yaml is one group, its four batch sizes four passes side by side; the
    # same configurations and values as one at a time; 16 and 32 were no faster), 1 for TPE,
    # whose constant liar found lower best values in batches of 8 for 3 seeds of 3, and in
    # batches of 2 for 2 of 3 (benchmarks/results/tpe_batched-by-8.md, tpe_batched-by-2.md);
    # TPE's random start-up trials are batched like a random study's (search.study.ask_batch):
    # the same configurations and best values as one at a time, in 0.94 of the time
    # (tpe_batched.md).
    Knob("FER_SEARCH_ASK_BATCH", None, "a whole number (>= 1)", _number(int, 1),
         "A worker of a random or TPE study asks this many trials at once and trains those that "
         "can share a pass in one (1: one trial at a time). Unset: 8 for a random study; for TPE "
         "8 for its 10 random start-up trials, then 1 (batched TPE learns from fewer finished "
         "trials). A TPE batch never spans the end of the start-up.", USER),
    # Writing a head's weights and Adam state after every epoch took ~5-6% of a 6-head group's
    # time (profiled) on 4,000 faces.
    Knob("FER_SEARCH_CHECKPOINT_S", 10.0, _SECONDS, _number(float, 0),
         "A head on the engine is checkpointed after an epoch once its last checkpoint is this "
         "old (0: after every epoch): at most this much head training is lost to a kill.", USER),
    # One transaction per trial and epoch was ~5% of a 32-trial random study's time on SQLite
    # (profiled), and is load on a shared database at many workers.
    Knob("FER_SEARCH_REPORT_S", 5.0, _SECONDS, _number(float, 0),
         "Without a pruner, a trial's per-epoch values are written to the study together, once "
         "this many seconds have passed since its last write and when it ends (0: after every "
         "epoch). With a pruner, which reads them, every epoch is written at once.", USER),
    Knob("FER_SEARCH_TF_LOGS", False, "0 or 1", _flag,
         "1 shows TensorFlow's native start-up lines (oneDNN, CUDA probes), hidden by default.",
         USER),
    Knob("FER_SEARCH_HEAD_JIT", "0", "0, step or epoch", _choice("0", "step", "epoch"),
         "For GPUs, unmeasured: XLA-compile the head engine's step (`step`) or whole epoch "
         "(`epoch`); 3-100x slower on CPU. benchmarks/gpu.sh measures `step`.", USER),
    # ------------------------------------------------------------------------------ for tests
    Knob("FER_SEARCH_TEST_KILL_AT_EPOCH", 0, "a whole number (>= 0)", _number(int, 0),
         "A worker SIGKILLs itself right after reporting this epoch of a trial (0: never): a "
         "machine lost mid-training at a known point.", TESTS),
    Knob("FER_SEARCH_TEST_BUILD_LOG", None, "a file", _text,
         "Every crop cache or feature set built appends one line (`crops KEY` or `features "
         "NAME`) to this file: tests count builds across worker processes.", TESTS),
    Knob("FER_SEARCH_TEST_CACHE_UNLOCKED", False, "0 or 1", _flag,
         "1: a cache entry's own file lock locks nothing, as between machines sharing the cache "
         "folder over NFS; only a lock handed in by `search` (held by the storage) then "
         "serialises its builders.", TESTS),
    Knob("FER_SEARCH_DISK_LIMIT_BYTES", None, "bytes (a whole number >= 0)", _number(int, 0),
         "Caps the free disk space the caches see: a full disk, simulated.", TESTS),
    Knob("FER_SEARCH_MLFLOW_TEMPLATE_DIR", None, "a folder", _text,
         "Where the migrated MLflow store template is kept (default: the user cache folder, "
         "$XDG_CACHE_HOME/fer-search/mlflow-store); tests point it at a temporary folder.", TESTS),
    Knob("FER_SEARCH_REQUIRE_POSTGRES", False, "0 or 1", _flag,
         "1 turns the skip of the `postgres` tests (no initdb/pg_ctl here) into a failure (CI).",
         TESTS),
    Knob("FER_SEARCH_REQUIRE_BROWSER", False, "0 or 1", _flag,
         "1 turns the skip of the `browser` tests (no Playwright or Chromium) into a failure "
         "(CI).", TESTS),
    Knob("FER_SEARCH_CHROMIUM", None, "a file", _text,
         "The Chromium executable the `browser` tests drive (default: found on PATH).", TESTS),
    Knob("FER_SEARCH_SCREENSHOTS", None, "a folder", _text,
         "Where the `browser` tests keep their screenshots (default: .artifacts/screenshots/).",
         TESTS),
]}

# Names other modules write into a subprocess's environment.
STORAGE_ENV = "FER_SEARCH_STORAGE"
KILL_AT_EPOCH_ENV = "FER_SEARCH_TEST_KILL_AT_EPOCH"

_overrides: dict[str, str | None] = {}
_UNSET = object()


def get(name: str) -> Any:
    """The value of knob `name` now: an `override`, else the environment, else its default.

    Raises:
        KeyError: `name` is no knob (a typo in the code).
        SettingError: the value is malformed.
    """
    knob = KNOBS[name]
    text = _overrides[name] if name in _overrides else os.environ.get(name)
    if text is None or not text.strip():
        return knob.default
    try:
        return knob.parse(text)
    except (ValueError, LookupError):
        raise SettingError(name, knob.kind, text) from None


@contextlib.contextmanager
def override(**values: Any) -> Iterator[None]:
    """Sets knobs in this process for the block, by name, whatever the environment says:
    ``with settings.override(FER_SEARCH_GRACE_S=2): ...``. None means unset (the default).
    Values are checked as the environment's text would be, when read."""
    for name in values:
        if name not in KNOBS:
            raise KeyError(f"no knob named {name!r}; knobs: {', '.join(KNOBS)}")
    saved = {name: _overrides.get(name, _UNSET) for name in values}
    _overrides.update({n: None if v is None else str(v) for n, v in values.items()})
    try:
        yield
    finally:
        for name, before in saved.items():
            if before is _UNSET:
                _overrides.pop(name, None)
            else:
                _overrides[name] = before


# ------------------------------------------------------------------------------- accessors


def storage() -> str | None:
    return get("FER_SEARCH_STORAGE")


def cache_dir() -> str | None:
    return get("FER_SEARCH_CACHE_DIR")


def db_retry_s() -> float:
    return get("FER_SEARCH_DB_RETRY_S")


def heartbeat_s() -> int:
    return get("FER_SEARCH_HEARTBEAT_S")


def grace_s() -> int:
    return get("FER_SEARCH_GRACE_S")


def timeout_grace_s() -> float:
    return get("FER_SEARCH_TIMEOUT_GRACE_S")


def max_group() -> int:
    return get("FER_SEARCH_MAX_GROUP")


def ask_batch() -> int | None:
    """None when unset: the sampler's own default (search.study.ask_batch.DEFAULT_BATCH)."""
    return get("FER_SEARCH_ASK_BATCH")


def checkpoint_s() -> float:
    return get("FER_SEARCH_CHECKPOINT_S")


def report_s() -> float:
    return get("FER_SEARCH_REPORT_S")


def tf_logs() -> bool:
    return get("FER_SEARCH_TF_LOGS")


def head_jit() -> str:
    return get("FER_SEARCH_HEAD_JIT")


def kill_at_epoch() -> int:
    return get("FER_SEARCH_TEST_KILL_AT_EPOCH")


def build_log() -> str | None:
    return get("FER_SEARCH_TEST_BUILD_LOG")


def cache_unlocked() -> bool:
    return get("FER_SEARCH_TEST_CACHE_UNLOCKED")


def disk_limit_bytes() -> int | None:
    return get("FER_SEARCH_DISK_LIMIT_BYTES")


def mlflow_template_dir() -> str | None:
    return get("FER_SEARCH_MLFLOW_TEMPLATE_DIR")


def require_postgres() -> bool:
    return get("FER_SEARCH_REQUIRE_POSTGRES")


def require_browser() -> bool:
    return get("FER_SEARCH_REQUIRE_BROWSER")


def chromium() -> str | None:
    return get("FER_SEARCH_CHROMIUM")


def screenshots() -> str | None:
    return get("FER_SEARCH_SCREENSHOTS")


# ------------------------------------------------------------------------------- the table


def markdown_table() -> str:
    """The knobs as a Markdown table: docs/settings.md holds this text (a test compares)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    def default(knob: Knob) -> str:
        if knob.default is None:
            return "unset"
        if isinstance(knob.default, bool):
            return f"`{int(knob.default)}`"
        return f"`{knob.default:g}`" if isinstance(knob.default, float) else f"`{knob.default}`"

    lines = ["| Variable | Default | Type | For | Meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{k.name}` | {default(k)} | {cell(k.kind)} | {k.audience} | {cell(k.meaning)} |"
              for k in KNOBS.values()]
    return "\n".join(lines) + "\n"
