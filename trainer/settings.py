"""The knob machinery for every `FER_SEARCH_*` environment variable, and the trainer's own knobs.

Each package declares the knobs it reads, once, in its own settings module: the trainer here,
`search` in search/settings.py, the tests in tests/infra/settings.py. A declaration says the
name, default, type, meaning, and whether it is for users or for tests; docs/settings.md is the
table of all three (`python -m tests.infra.settings` prints it; a test compares).

A knob is read when it is used (`get` or its accessor, called at that moment), never frozen
into a constant at import, so a value set after start-up (a test's `override`, a worker's
environment) is seen. A malformed value stops with one `SettingError` naming the variable, what
was expected and what was found. An unset or empty variable means its default.

Tests inject knobs in-process with the home's `override`; tests that start subprocesses pass
them in the subprocess's environment.

This module is the bottom floor: both `trainer` and `search` read it, so it imports nothing of
either (but trainer.errors, which imports nothing), nor optuna, mlflow or tensorflow.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
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


def number(cast: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    """A parser of numbers `cast` can read, at least `minimum` (nan refused)."""
    def parse(text: str) -> Any:
        value = cast(text.strip())
        if not value >= minimum:  # also refuses nan
            raise ValueError(text)
        return value

    return parse


def flag(text: str) -> bool:
    """A parser of 0/1, true/false, yes/no."""
    words = {"1": True, "true": True, "yes": True, "0": False, "false": False, "no": False}
    return words[text.strip().lower()]  # KeyError is a LookupError: caught as malformed


def choice(*choices: str) -> Callable[[str], str]:
    """A parser of one of `choices`."""
    def parse(text: str) -> str:
        if text.strip() not in choices:
            raise ValueError(text)
        return text.strip()

    return parse


def text(value: str) -> str:
    """The text as it is (a URL, a path)."""
    return value


SECONDS = "seconds (a number >= 0)"

# In-process overrides of every home, by name (names are unique across homes: a test checks).
_overrides: dict[str, str | None] = {}
_UNSET = object()


class Knobs:
    """One home's knobs: `home` (the module that declares them) and each knob by name."""

    def __init__(self, home: str, knobs: Iterable[Knob]) -> None:
        self.home = home
        self.by_name: dict[str, Knob] = {knob.name: knob for knob in knobs}

    def __contains__(self, name: object) -> bool:
        return name in self.by_name

    def __getitem__(self, name: str) -> Knob:
        return self.by_name[name]

    def __iter__(self) -> Iterator[Knob]:
        return iter(self.by_name.values())

    def get(self, name: str) -> Any:
        """The value of knob `name` now: an `override`, else the environment, else its default.

        Raises:
            KeyError: `name` is no knob of this home (a typo in the code).
            SettingError: the value is malformed.
        """
        knob = self.by_name[name]
        value = _overrides[name] if name in _overrides else os.environ.get(name)
        if value is None or not value.strip():
            return knob.default
        try:
            return knob.parse(value)
        except (ValueError, LookupError):
            raise SettingError(name, knob.kind, value) from None

    @contextlib.contextmanager
    def override(self, **values: Any) -> Iterator[None]:
        """Sets knobs of this home in this process for the block, by name, whatever the
        environment says: ``with settings.override(FER_SEARCH_CHECKPOINT_S=0): ...``. None means
        unset (the default). Values are checked as the environment's text would be, when read."""
        for name in values:
            if name not in self.by_name:
                raise KeyError(f"no knob named {name!r} in {self.home}; its knobs: "
                               f"{', '.join(self.by_name)}")
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


KNOBS = Knobs("trainer/settings.py", [
    # Writing a head's weights and Adam state after every epoch took ~5-6% of a 6-head group's
    # time (profiled) on 4,000 faces.
    Knob("FER_SEARCH_CHECKPOINT_S", 10.0, SECONDS, number(float, 0),
         "A head on the engine is checkpointed after an epoch once its last checkpoint is this "
         "old (0: after every epoch): at most this much head training is lost to a kill.", USER),
    Knob("FER_SEARCH_TF_LOGS", False, "0 or 1", flag,
         "1 shows TensorFlow's native start-up lines (oneDNN, CUDA probes), hidden by default.",
         USER),
    Knob("FER_SEARCH_HEAD_JIT", "0", "0, step or epoch", choice("0", "step", "epoch"),
         "For GPUs, unmeasured: XLA-compile the head engine's step (`step`) or whole epoch "
         "(`epoch`); 3-100x slower on CPU. benchmarks/gpu.sh measures `step`.", USER),
])
get = KNOBS.get
override = KNOBS.override


# ------------------------------------------------------------------------------- accessors


def checkpoint_s() -> float:
    return get("FER_SEARCH_CHECKPOINT_S")


def tf_logs() -> bool:
    return get("FER_SEARCH_TF_LOGS")


def head_jit() -> str:
    return get("FER_SEARCH_HEAD_JIT")


# ------------------------------------------------------------------------------- the table


def markdown_table(*homes: Knobs) -> str:
    """The knobs of `homes` as one Markdown table, in order: docs/settings.md holds the table of
    the trainer's, search's and the tests' knobs (`python -m tests.infra.settings`)."""
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    def default(knob: Knob) -> str:
        if knob.default is None:
            return "unset"
        if isinstance(knob.default, bool):
            return f"`{int(knob.default)}`"
        return f"`{knob.default:g}`" if isinstance(knob.default, float) else f"`{knob.default}`"

    lines = ["| Variable | Default | Type | For | Declared in | Meaning |",
             "|---|---|---|---|---|---|"]
    lines += [f"| `{k.name}` | {default(k)} | {cell(k.kind)} | {k.audience} | `{home.home}` | "
              f"{cell(k.meaning)} |" for home in homes for k in home]
    return "\n".join(lines) + "\n"
