"""Generic validation of a YAML document, with errors that point at the file, line and field.

Nothing here knows what a study is. PyYAML parses the text once into plain values and the node
tree (for line numbers; a key written twice is an error here). The values are validated by
pydantic models built on `Strict`: unknown keys are errors, nothing is coerced, and pydantic's
first error becomes one `Fault` (field path, what was expected, what was found), which
`NodeReader` turns into a `SpecError` naming the file and the line of that path
(``study.yaml:6: space.batch_size[1]: expected an integer >= 1, but got -4``). The sections of
a study spec (`search.spec.sections`, `search.spec.data_section`, `search.spec.loader`) are
written on top of it.
"""

from __future__ import annotations

import difflib
import math
import re
from pathlib import Path
from typing import Any, ClassVar, TypeAlias, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    ValidatorFunctionWrapHandler,
    model_validator,
)
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

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
    """One parsed document's file and node tree, to point each error at a line."""

    def __init__(self, path: Path, node: Node | None) -> None:
        self.path = path
        self.node = node

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

    def fault(self, fault: Fault) -> SpecError:
        return self.error(fault.at, fault.expected, fault.found, found_text=fault.found_text)

    def validate(self, model: type[M], value: object) -> M:
        """``value`` as ``model``, or the `SpecError` of its first fault."""
        try:
            return validated(model, value)
        except Fault as fault:
            raise self.fault(fault) from None


# ------------------------------------------------------------------------- pydantic, one fault


class Fault(ValueError):
    """One broken rule, at a path relative to where it was found: what a validator raises (inside
    pydantic it travels as a ``value_error``), and what `Strict` turns pydantic's own errors into.
    """

    def __init__(
        self, at: At, expected: str, found: object = _MISSING, *, found_text: str | None = None
    ) -> None:
        super().__init__(expected)
        self.at, self.expected, self.found, self.found_text = at, expected, found, found_text

    def under(self, prefix: At) -> Fault:
        return Fault((*prefix, *self.at), self.expected, self.found, found_text=self.found_text)


class Strict(BaseModel):
    """A spec mapping: unknown keys are errors, no value is coerced (``"1"`` is not 1, ``true``
    is not 1, ``.inf`` is not a number), and a failed validation becomes one `Fault`.

    Each field's ``description`` is what it expects (``"an integer >= 1"``): pydantic's own
    errors (a wrong type, a bound) are told in those words. A model nested in another raises its
    `Fault` up, and the outer model adds the field's name to its path, so the path of every fault
    is the field path of the document."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
    what: ClassVar[str] = "a mapping"  # expected, when the value is not a mapping

    @model_validator(mode="wrap")
    @classmethod
    def _one_fault(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        if not isinstance(value, dict):
            raise Fault((), cls.what, value)
        try:
            return handler(value)
        except ValidationError as error:
            raise _first_fault(cls, value, error) from None


M = TypeVar("M", bound=BaseModel)
# Unknown keys first (a misspelt key is also a missing one), then missing ones, then values.
_ORDER = {"extra_forbidden": 0, "invalid_key": 0, "missing": 1}


def _first_fault(model: type[BaseModel], value: dict[Any, Any], error: ValidationError) -> Fault:
    first = min(error.errors(), key=lambda e: _ORDER.get(e["type"], 2))
    at: At = tuple(part for part in first["loc"] if part != "[key]")  # a dict key's own check
    cause = first.get("ctx", {}).get("error")
    if isinstance(cause, Fault):
        return cause.under(at)
    if not at:
        raise error  # a model's own check must raise a Fault: a bug, not a spec's fault
    if first["type"] in ("extra_forbidden", "invalid_key"):
        return unknown_key(at, at[-1], tuple(model.model_fields))
    if first["type"] == "missing":
        return Fault(at, f"a value for {at[-1]!r}", found_text="nothing (missing)")
    # A wrong type or a broken bound: the field's own words, and the value as written.
    return Fault(at[:1], model.model_fields[at[0]].description or "a valid value", value[at[0]])


def unknown_key(at: At, key: Any, allowed: tuple[str, ...]) -> Fault:
    """The fault of ``key`` (at ``at``) in a mapping that takes only the ``allowed`` keys."""
    found = f"an unknown key {show(key)}"
    close = difflib.get_close_matches(key, allowed, n=1) if isinstance(key, str) else []
    if close:
        found += f" (did you mean {close[0]!r}?)"
    return Fault(at, "one of the keys " + ", ".join(allowed), found_text=found)


def validated(model: type[M], value: object) -> M:
    """``value`` as ``model`` (a `Strict` model), or its `Fault` raised."""
    try:
        return model.model_validate(value)
    except ValidationError as error:
        cause = error.errors()[0].get("ctx", {}).get("error")
        if isinstance(cause, Fault):
            raise cause from None
        raise  # not a Strict model: a bug, not a spec's fault


def one_of(choices: tuple[str, ...]) -> str:
    return "one of " + ", ".join(repr(c) for c in choices)


def _child(node: Node, part: str | int) -> Node | None:
    if isinstance(node, MappingNode):
        for key, value in node.value:
            if isinstance(key, ScalarNode) and key.value == str(part):
                return value
    if isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
        return node.value[part]
    return None


def is_int(value: object) -> bool:
    # bool is an int subclass; `epochs: true` is a typo, not 1.
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: object) -> bool:
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
    )
