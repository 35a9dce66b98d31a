"""The ``data`` section of a study spec: a generated synthetic set, or a real ExpW folder.

    data:
      synthetic: {faces: 1400, seed: 0, imbalance: false}
      # or root: data/expw, plus label_file, image_dir, margin, min_confidence, strict
      split: [0.7, 0.1, 0.2]          # optional, both kinds
      split_seed: 0                   # optional, both kinds
      cache_dir: .cache               # optional, both kinds

The ExpW keys are `DataConfig`'s fields, and `DataConfig` applies its own rules (split fractions,
margin, ...) to what the spec says, so a reading option is declared once, in the trainer. The
pydantic models here check only the shapes (a path is a string, ``strict`` is true or false);
`read_data` picks the kind and lets `DataConfig` judge the rest.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, create_model

from search.spec.reader import Fault, Strict, validated
from trainer.config import DEFAULT_SPLIT, DataConfig
from trainer.errors import ConfigError
from trainer.labels import NUM_CLASSES

# Where synthetic datasets are generated, relative to the working directory.
SYNTHETIC_DIR = Path("data")
DEFAULT_CACHE_DIR = ".cache"
# DataConfig's fields a spec sets; the cache folder is the study's (a flag may override it) and
# the decoding threads are the machine's, so both are set per run by `StudySpec.data_config`.
READING_OPTIONS = tuple(
    f.name for f in dataclasses.fields(DataConfig) if f.name not in ("cache_dir", "workers")
)
_SPLIT_KEYS = ("split", "split_seed")  # valid for both kinds of data
_EXPW_KEYS = tuple(name for name in READING_OPTIONS if name not in _SPLIT_KEYS)


@dataclass(frozen=True)
class SyntheticData:
    """A generated ExpW-format dataset, made under ``data/`` on first use.

    Attributes:
        faces: how many faces to generate.
        seed: the generator's seed.
        imbalance: give the classes ExpW's skewed frequencies instead of equal ones.
        split: train / validation / test fractions.
        split_seed: seeds the grouped, stratified split.
    """

    faces: int
    seed: int = 0
    imbalance: bool = False
    split: tuple[float, float, float] = DEFAULT_SPLIT
    split_seed: int = 0

    @property
    def root(self) -> Path:
        """``data/synthetic-<faces>-<seed>[-imbalanced]``, relative to the working directory."""
        suffix = "-imbalanced" if self.imbalance else ""
        return SYNTHETIC_DIR / f"synthetic-{self.faces}-{self.seed}{suffix}"

    def reading_options(self) -> dict[str, Any]:
        """The `DataConfig` fields this dataset sets (besides ``cache_dir``)."""
        return {"root": self.root, "split": self.split, "split_seed": self.split_seed}


@dataclass(frozen=True)
class ExpwData:
    """A real ExpW folder, as the `DataConfig` the spec describes (see it for each option).

    Attributes:
        config: the reading options; its ``cache_dir`` and ``workers`` are not the spec's (see
            `READING_OPTIONS`).
    """

    config: DataConfig

    @property
    def root(self) -> Path:
        return self.config.root

    def reading_options(self) -> dict[str, Any]:
        """The `DataConfig` fields this dataset sets (besides ``cache_dir``)."""
        return {name: getattr(self.config, name) for name in READING_OPTIONS}


class _Faces(Strict):
    what: ClassVar[str] = "a mapping {faces, seed, imbalance}"
    # The generator needs at least one face per class (trainer.data.synthetic).
    faces: int = Field(ge=NUM_CLASSES, description=f"an integer >= {NUM_CLASSES}")
    seed: int = Field(0, ge=0, description="an integer >= 0")
    imbalance: bool = Field(False, description="true or false")


class _Data(Strict):
    """The keys of both kinds."""

    split: list[Any] = Field(DEFAULT_SPLIT, description="a list [train, val, test]")
    split_seed: int = Field(0, ge=0, description="an integer >= 0")
    cache_dir: str = Field(DEFAULT_CACHE_DIR, pattern=r"\S", description="a non-empty string")

    def _split(self) -> dict[str, Any]:
        return {"split": tuple(self.split), "split_seed": self.split_seed}


class _Synthetic(_Data):
    synthetic: _Faces

    def dataset(self) -> SyntheticData:
        return SyntheticData(**self.synthetic.model_dump(), **self._split())


class _ExpwOptions(_Data):
    # Values the trainer would take in a form the user did not mean (a number as a path, "yes"
    # as true) are refused here; everything else is DataConfig's to judge.
    root: str = Field(pattern=r"\S", description="a path")
    label_file: str | None = Field(None, pattern=r"\S", description="a path")
    image_dir: str | None = Field(None, pattern=r"\S", description="a path")
    margin: int | float | None = Field(None, description="a number in [0, 1]")
    min_confidence: int | float | None = Field(None, description="a number >= 0")
    strict: bool | None = Field(None, description="true or false")

    def dataset(self) -> ExpwData:
        options = {key: getattr(self, key) for key in _EXPW_KEYS if getattr(self, key) is not None}
        for key in ("root", "label_file", "image_dir"):
            if key in options:
                options[key] = _expand(options[key])
        return ExpwData(DataConfig(**options, **self._split(), cache_dir=Path(DEFAULT_CACHE_DIR)))


# Any other reading option DataConfig grows is a key too, judged by DataConfig alone.
_Expw = create_model(
    "_Expw", __base__=_ExpwOptions,
    **{name: (Any, None) for name in _EXPW_KEYS if name not in _ExpwOptions.model_fields},
)


def read_data(value: Any) -> tuple[SyntheticData | ExpwData, Path]:
    """The dataset and the cache folder (the validator of the spec's ``data``)."""
    if not isinstance(value, dict):
        raise Fault((), "a mapping with synthetic: {faces, ...} or root: path", value)
    if "synthetic" in value and "root" in value:
        raise Fault((), "either synthetic or root, not both", found_text="both synthetic and root")
    if "synthetic" not in value and "root" not in value:
        raise Fault(
            (),
            "either synthetic: {faces, seed, imbalance} or root: path/to/expw",
            found_text=f"neither (keys: {', '.join(map(str, value)) or 'none'})",
        )
    spec = validated(_Synthetic if "synthetic" in value else _Expw, value)
    cache_dir = _expand(spec.cache_dir)
    try:
        data = spec.dataset()
        # DataConfig's own rules (split fractions, margin, ...), on what the spec says.
        DataConfig(**data.reading_options(), cache_dir=cache_dir)
    except ConfigError as error:
        # `split` went in as a tuple; show it as the list the user wrote.
        found = list(error.found) if isinstance(error.found, tuple) else error.found
        raise Fault((error.field,), error.expected, found) from error
    return data, cache_dir


def _expand(text: str) -> Path:
    # `~` is expanded; anything else relative stays relative to the working directory.
    return Path(text).expanduser()
