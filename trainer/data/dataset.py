"""The in-memory shape of a loaded dataset: three splits of uint8 faces with their labels.

`load_dataset` (trainer.data.loading) builds these from an ExpW-format folder; tests may build them
directly from arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.files.cache_lock import CacheLock
from trainer.labels import CLASS_NAMES

SPLIT_NAMES = ("train", "val", "test")


@dataclass(frozen=True)
class Split:
    """One split: faces as uint8 RGB (N, S, S, 3), often a read-only memory map, and labels (N,).

    `groups` holds the source image name of each face; faces of one photo share a split.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def class_counts(self) -> dict[str, int]:
        counts = np.bincount(self.labels, minlength=len(CLASS_NAMES))
        return {name: int(c) for name, c in zip(CLASS_NAMES, counts, strict=True)}


@dataclass(frozen=True)
class DataReport:
    """What the reader saw: kept faces, class counts, and everything it skipped, with reasons."""

    faces: int
    class_counts: dict[str, int]
    split_sizes: dict[str, int]
    split_class_counts: dict[str, dict[str, int]]
    skipped_lines: int = 0
    duplicate_lines: int = 0
    empty_boxes: int = 0
    low_confidence: int = 0
    skipped_files: tuple[str, ...] = ()
    skipped_faces: int = 0
    label_file: str = ""
    image_dir: str = ""
    # kind -> {"files", "faces", "examples"}: see trainer.data.problems (faces skipped, and why)
    problems: dict[str, dict] = field(default_factory=dict)

    def skipped_summary(self) -> str | None:
        """One line: faces skipped and why, with the first file names; None when none were."""
        from trainer.data.problems import summary

        return summary(self.problems, self.faces + sum(p["faces"] for p in
                                                       self.problems.values()))

    def to_dict(self) -> dict:
        return {
            "faces": self.faces,
            "class_counts": dict(self.class_counts),
            "split_sizes": dict(self.split_sizes),
            "split_class_counts": {k: dict(v) for k, v in self.split_class_counts.items()},
            "skipped_lines": self.skipped_lines,
            "duplicate_lines": self.duplicate_lines,
            "empty_boxes": self.empty_boxes,
            "low_confidence": self.low_confidence,
            "skipped_files": list(self.skipped_files),
            "skipped_faces": self.skipped_faces,
            "label_file": self.label_file,
            "image_dir": self.image_dir,
            "problems": {k: dict(v) for k, v in self.problems.items()},
        }


@dataclass(frozen=True)
class Dataset:
    """A dataset ready for training at one image size.

    Attributes:
        train, val, test: the three splits (no source image appears in two of them).
        fingerprint: a content hash of everything that determines the arrays (label file, image
            files' sizes and mtimes, image size, margin, confidence filter, split settings). Caches
            derived from the data (features, checkpoints) are keyed by it.
        image_size: side of the square faces.
        cache_dir: where derived caches (features) are written.
        report: what the reader saw and skipped.
        class_names: label index -> expression name.
        cache_lock: the lock around building a derived cache entry when the cache folder is
            shared between machines (`trainer.files.cache_lock`); None: a file lock.
    """

    train: Split
    val: Split
    test: Split
    fingerprint: str
    image_size: int
    cache_dir: Path
    report: DataReport | None = None
    class_names: tuple[str, ...] = field(default=CLASS_NAMES)
    cache_lock: CacheLock | None = field(default=None, compare=False, repr=False)

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise KeyError(f"split must be one of {SPLIT_NAMES}, but got {name!r}")
        return getattr(self, name)
