"""The ``data`` section of a study spec: a generated synthetic set, or a real ExpW folder.

    data:
      synthetic: {faces: 1400, seed: 0, imbalance: false}
      # or root: data/expw, plus label_file, image_dir, margin, min_confidence, strict
      split: [0.7, 0.1, 0.2]          # optional, both kinds
      split_seed: 0                   # optional, both kinds
      cache_dir: .cache               # optional, both kinds

The ExpW keys are `DataConfig`'s fields, and `DataConfig` applies its own rules (split fractions,
margin, ...) to what the spec says, so a reading option is declared once, in the trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.spec.reader import At, NodeReader
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
_COMMON_KEYS = (*_SPLIT_KEYS, "cache_dir")
_EXPW_KEYS = tuple(name for name in READING_OPTIONS if name not in _SPLIT_KEYS)
_SYNTHETIC_KEYS = ("faces", "seed", "imbalance")


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


def read_data(r: NodeReader, value: object) -> tuple[SyntheticData | ExpwData, Path]:
    """The dataset and the cache folder."""
    at: At = ("data",)
    if not isinstance(value, dict):
        raise r.error(at, "a mapping with synthetic: {faces, ...} or root: path", value)
    if "synthetic" in value and "root" in value:
        raise r.error(
            at, "either synthetic or root, not both", found_text="both synthetic and root"
        )
    if "synthetic" in value:
        r.mapping(value, at, ("synthetic", *_COMMON_KEYS))
        data: SyntheticData | ExpwData = _synthetic(r, value)
    elif "root" in value:
        r.mapping(value, at, (*_EXPW_KEYS, *_COMMON_KEYS))
        data = _expw(r, value)
    else:
        raise r.error(
            at,
            "either synthetic: {faces, seed, imbalance} or root: path/to/expw",
            found_text=f"neither (keys: {', '.join(map(str, value)) or 'none'})",
        )
    cache_dir = _path(r.string(value.get("cache_dir", DEFAULT_CACHE_DIR), (*at, "cache_dir")))
    _check_data_config(r, data.reading_options(), cache_dir)
    return data, cache_dir


def _synthetic(r: NodeReader, value: dict[str, Any]) -> SyntheticData:
    at: At = ("data", "synthetic")
    spec = r.mapping(
        value["synthetic"], at, _SYNTHETIC_KEYS, required=("faces",),
        what="a mapping {faces, seed, imbalance}",
    )
    return SyntheticData(
        # The generator needs at least one face per class (trainer.data.synthetic).
        faces=r.integer(spec["faces"], (*at, "faces"), NUM_CLASSES),
        seed=r.integer(spec.get("seed", 0), (*at, "seed"), 0),
        imbalance=r.boolean(spec.get("imbalance", False), (*at, "imbalance")),
        **_split_options(r, value),
    )


def _expw(r: NodeReader, value: dict[str, Any]) -> ExpwData:
    at: At = ("data",)
    # Values the trainer would take in a form the user did not mean (a number as a path, "yes"
    # as true) are checked here; everything else is DataConfig's to judge.
    options = {key: value[key] for key in _EXPW_KEYS if value.get(key) is not None}
    for key in ("root", "label_file", "image_dir"):
        if key in options or key == "root":
            options[key] = _path(r.string(value.get(key), (*at, key), "a path"))
    if "margin" in options:
        r.number(options["margin"], (*at, "margin"), "a number in [0, 1]")
    if "min_confidence" in options:
        r.number(options["min_confidence"], (*at, "min_confidence"), "a number >= 0")
    if "strict" in options:
        r.boolean(options["strict"], (*at, "strict"))
    options.update(_split_options(r, value))
    return ExpwData(_check_data_config(r, options, Path(DEFAULT_CACHE_DIR)))


def _split_options(r: NodeReader, value: dict[str, Any]) -> dict[str, Any]:
    split = value.get("split", list(DEFAULT_SPLIT))
    if not isinstance(split, list):
        raise r.error(("data", "split"), "a list [train, val, test]", split)
    split_seed = r.integer(value.get("split_seed", 0), ("data", "split_seed"), 0)
    return {"split": tuple(split), "split_seed": split_seed}


def _check_data_config(r: NodeReader, options: dict[str, Any], cache_dir: Path) -> DataConfig:
    """Lets `DataConfig` apply its own rules (split fractions, margin, ...)."""
    try:
        return DataConfig(**options, cache_dir=cache_dir)
    except ConfigError as error:
        # `split` went in as a tuple; show it as the list the user wrote.
        found = list(error.found) if isinstance(error.found, tuple) else error.found
        raise r.error(("data", error.field), error.expected, found) from error


def _path(text: str) -> Path:
    # `~` is expanded; anything else relative stays relative to the working directory.
    return Path(text).expanduser()
