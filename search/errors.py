"""The search package's exceptions.

`SpecError` is bad input (the CLI exits with code 2): it stops a study before anything is created.
`StudyError` is a runtime failure of a whole study (exit code 1), e.g. too many trials failing in
a row. A single failing trial is not an error here: it is marked FAIL and the study goes on.
"""

from __future__ import annotations

import reprlib

_MISSING = object()

# Long values (a whole mapping pasted in the wrong place) would drown the message.
_REPR = reprlib.Repr()
_REPR.maxstring = 80
_REPR.maxother = 80
_REPR.maxlist = 8
_REPR.maxdict = 6


def show(value: object) -> str:
    """A short repr of a value found in a spec, for error messages."""
    return _REPR.repr(value)


class SearchError(Exception):
    """Base class of every error the search package raises on purpose."""


class SpecError(SearchError, ValueError):
    """A study spec is missing, not valid YAML, or holds a value the search cannot use.

    The message names the file (and line when known), the field path, what was expected and what
    was found: ``"<file>:<line>: <field.path>: expected <...>, but got <...>"``.

    Attributes:
        file: the spec file, as given.
        field: dotted field path such as ``space.learning_rate[1]``; None for file-level problems
            (missing file, YAML syntax error).
        expected: what the field must hold.
        found: the value found (``None`` also when nothing was found; see `found_text`).
        found_text: how the found value is shown in the message.
        line: 1-based line in the file, when known.
    """

    def __init__(
        self,
        file: object,
        field: str | None,
        expected: str,
        found: object = _MISSING,
        *,
        found_text: str | None = None,
        line: int | None = None,
    ) -> None:
        self.file = str(file)
        self.field = field
        self.expected = expected
        self.found = None if found is _MISSING else found
        if found_text is None:
            found_text = "nothing" if found is _MISSING else show(found)
        self.found_text = found_text
        self.line = line
        where = self.file if line is None else f"{self.file}:{line}"
        parts = [where] if field is None else [where, field]
        super().__init__(": ".join(parts) + f": expected {expected}, but got {found_text}")


class StudyError(SearchError):
    """A study cannot go on, e.g. after too many consecutive failed trials."""


class FailureBudgetSpent(StudyError):
    """The study's `max_failed_trials` trials have failed for good: every worker stops before
    its next claim (exit code `EXIT_FAILED_TRIALS`, final: a supervisor should not restart it)."""


class InputError(SearchError):
    """Bad input other than a spec (exit code 2): an unknown study or model, a malformed model
    reference or storage URL, an unreadable image."""
