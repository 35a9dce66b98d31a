"""The ``warm_start`` section of a study spec: an earlier study this one starts from.

    warm_start:
      study: quickstart        # the earlier study's name (required)
      top: 5                   # its best trials that fit this space, queued first (default 5)
      storage: sqlite:///studies/optuna.db   # where it is; default: this study's own storage

What the study does with it is `search.study.warm_start`'s: the earlier study's best
configurations that fit this study's space are queued first (a grid's points claimed first), and
a TPE study learns from all its finished trials that fit. ``fer-search run SPEC --warm-start
NAME`` sets (or overrides) ``study`` (`with_warm_start`). The storage URL is a secret like the
spec's own ``storage``: masked wherever it is shown (`search.urls.mask_url`; the spec's
`redacted_text` masks every URL in the text).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, ClassVar

from pydantic import AfterValidator, Field

from search.errors import InputError
from search.spec.reader import Fault, Strict
from search.urls import mask_url

DEFAULT_TOP = 5
STORAGE_EXPECTED = "a database URL such as sqlite:///studies/optuna.db, or null"


@dataclass(frozen=True)
class WarmStart:
    """An earlier study to start from.

    Attributes:
        study: its name.
        top: how many of its best trials that fit this study's space are queued first (0: none,
            a TPE study still learns from them).
        storage: its storage URL; None: this study's own storage.
    """

    study: str
    top: int = DEFAULT_TOP
    storage: str | None = None

    def __repr__(self) -> str:  # never the storage's password
        storage = None if self.storage is None else mask_url(self.storage)
        return f"WarmStart(study={self.study!r}, top={self.top}, storage={storage!r})"


def storage_url(value: str | None) -> str | None:
    """A storage URL holds '://'; what was found is shown masked (it may hold a password)."""
    if value is not None and "://" not in value:
        raise Fault((), STORAGE_EXPECTED, mask_url(value))
    return value


class WarmStartSection(Strict):
    """``warm_start: {study, top, storage}``."""

    what: ClassVar[str] = "a mapping {study, top, storage}"
    study: str = Field(pattern=r"\S", description="the name of an earlier study")
    top: int = Field(DEFAULT_TOP, ge=0, description="an integer >= 0")
    storage: Annotated[str | None, AfterValidator(storage_url)] = Field(
        None, description=STORAGE_EXPECTED
    )

    def warm_start(self) -> WarmStart:
        return WarmStart(self.study, self.top, self.storage)


def with_warm_start(spec, study: str):
    """`spec` (a `StudySpec`) starting from the earlier study `study` (``run --warm-start``):
    its ``warm_start`` with ``study`` replaced, or a new one with the defaults.

    Raises:
        InputError: `study` is empty or this spec's own study.
    """
    if not study.strip():
        raise InputError("--warm-start: expected an earlier study's name, but got ''")
    if study == spec.name:
        raise InputError(f"--warm-start: expected another study than {spec.name!r} itself, "
                         f"but got {study!r}")
    earlier = spec.warm_start or WarmStart(study)
    return dataclasses.replace(spec, warm_start=dataclasses.replace(earlier, study=study))
