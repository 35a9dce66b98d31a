"""Generic validation of a YAML document, with errors that point at the file, line and field.

Nothing here knows what a study is: `NodeReader` checks types, ranges, key sets and names of plain
values parsed from YAML, and turns each violation into a `SpecError` naming the file, the line
(from the node tree PyYAML parsed alongside the values), the field path (``space.lr[1]``), the
rule (``expected an integer >= 1``) and the value found. The sections of a study spec
(`search.spec.sections`, `search.spec.data_section`, `search.spec.loader`) are written on top of it.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeAlias

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from search.contracts import MODEL_NAME_EXPECTED, MODEL_NAME_PATTERN
from search.errors import _MISSING, SpecError, show

# A field path inside the document: ("space", "learning_rate", 1) is space.learning_rate[1].
At: TypeAlias = tuple[str | int, ...]


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading ``1e-4`` as a float.

    PyYAML follows YAML 1.1, where a float needs a dot: ``learning_rate: 1e-4`` would be the string
    '1e-4'. Learning rates are written that way all the time, so accept YAML 1.2's form too.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_text(path: Path) -> str:
    """The file's text, or a `SpecError` saying why it cannot be read."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(
            path, None, "an existing study spec file", found_text="no such file"
        ) from None
    except IsADirectoryError:
        raise SpecError(path, None, "a study spec file", found_text="a directory") from None
    except UnicodeDecodeError as error:
        raise SpecError(
            path, None, "a UTF-8 text file", found_text=f"undecodable bytes ({error.reason})"
        ) from None
    except OSError as error:
        raise SpecError(
            path, None, "a readable file", found_text=error.strerror or str(error)
        ) from None


def parse(path: Path, text: str) -> tuple[Node | None, Any]:
    """Parses ``text`` once into both its node tree (for line numbers) and plain values."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_duplicate_keys(path, node, ())
        return node, loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        problem = getattr(error, "problem", None) or str(error)
        context = getattr(error, "context", None)
        if context and problem.startswith("but "):  # "expected a single document ... but found"
            problem = f"{context} {problem}"
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise SpecError(
            path,
            None,
            "valid YAML",
            found_text=f"a YAML error{where}: {problem}",
            line=mark.line + 1 if mark is not None else None,
        ) from None
    finally:
        loader.dispose()


def _check_duplicate_keys(path: Path, node: Node, at: At) -> None:
    """Rejects a key written twice in one mapping; PyYAML would silently keep the last one."""
    if isinstance(node, SequenceNode):
        for index, item in enumerate(node.value):
            _check_duplicate_keys(path, item, (*at, index))
    if not isinstance(node, MappingNode):
        return
    seen: dict[str, int] = {}
    for key, value in node.value:
        if isinstance(key, ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
            line = key.start_mark.line + 1
            if key.value in seen:
                raise SpecError(
                    path,
                    dotted((*at, key.value)),
                    "each key once",
                    found_text=f"{key.value!r} again (first on line {seen[key.value]})",
                    line=line,
                )
            seen[key.value] = line
            _check_duplicate_keys(path, value, (*at, key.value))


def dotted(at: At) -> str:
    """``('space', 'learning_rate', 1)`` -> ``space.learning_rate[1]``."""
    if not at:
        return "(top level)"
    text = ""
    for part in at:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


class NodeReader:
    """Checks plain values of one parsed document; knows its file and node tree, to point each
    error at a line."""

    def __init__(self, path: Path, node: Node | None) -> None:
        self.path = path
        self.node = node

    # -- errors

    def line(self, at: At) -> int | None:
        """The line of the deepest node on the path ``at`` (its parent's when a key is missing)."""
        node = self.node
        if node is None:
            return None
        for part in at:
            child = _child(node, part)
            if child is None:
                break
            node = child
        return node.start_mark.line + 1

    def error(
        self,
        at: At,
        expected: str,
        found: object = _MISSING,
        *,
        found_text: str | None = None,
    ) -> SpecError:
        """The error to raise: ``file:line: field.path: expected <rule>, but got <value>``."""
        return SpecError(
            self.path, dotted(at), expected, found, found_text=found_text, line=self.line(at)
        )

    # -- readers: each returns the value when it obeys the rule, else raises `error`

    def mapping(
        self,
        value: object,
        at: At,
        allowed: Iterable[str],
        *,
        required: Iterable[str] = (),
        what: str = "a mapping",
    ) -> dict[str, Any]:
        """Checks ``value`` is a mapping with only ``allowed`` keys and every ``required`` one."""
        allowed = tuple(allowed)
        if not isinstance(value, dict):
            raise self.error(at, what, value)
        for key in value:
            if key not in allowed:
                raise self.error(
                    (*at, key),
                    "one of the keys " + ", ".join(allowed),
                    found_text=_unknown_key(key, allowed),
                )
        for key in required:
            if key not in value:
                raise self.error((*at, key), f"a value for {key!r}", found_text="nothing (missing)")
        return value

    def choice(self, value: object, at: At, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            raise self.error(at, "one of " + ", ".join(repr(c) for c in choices), value)
        return value

    def integer(self, value: object, at: At, low: int, high: int | None = None) -> int:
        """An int in ``low..high-1`` (``high`` exclusive; None: no upper bound)."""
        if not is_int(value) or value < low or (high is not None and value >= high):
            bound = f"in {low}..{high - 1}" if high is not None else f">= {low}"
            raise self.error(at, f"an integer {bound}", value)
        return value

    def number(self, value: object, at: At, expected: str = "a number") -> float | int:
        if not is_number(value):
            raise self.error(at, expected, value)
        return value

    def seconds(self, value: object, at: At) -> float | None:
        """A duration: a number > 0, or null (no limit)."""
        if value is not None and (not is_number(value) or value <= 0):
            raise self.error(at, "a number of seconds > 0, or null", value)
        return value

    def boolean(self, value: object, at: At) -> bool:
        if not isinstance(value, bool):
            raise self.error(at, "true or false", value)
        return value

    def string(self, value: object, at: At, expected: str = "a non-empty string") -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.error(at, expected, value)
        return value

    def name(self, value: object, at: At, hint: str = "") -> str:
        """A name fit for a URL, a file name and an MLflow experiment."""
        if not isinstance(value, str) or not MODEL_NAME_PATTERN.fullmatch(value):
            raise self.error(at, MODEL_NAME_EXPECTED + hint, value)
        return value


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def _unknown_key(key: object, allowed: tuple[str, ...]) -> str:
    text = f"an unknown key {show(key)}"
    close = difflib.get_close_matches(str(key), allowed, n=1) if isinstance(key, str) else []
    return f"{text} (did you mean {close[0]!r}?)" if close else text


def is_int(value: object) -> bool:
    # bool is an int subclass; `epochs: true` is a typo, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
