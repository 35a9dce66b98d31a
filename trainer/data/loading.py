"""From an ExpW-format folder to a `Dataset`: read, validate, crop once (cached), split.

Every check that needs only label.lst and the file system (layout, line format, classes present,
missing images in strict mode) runs before anything is written, so a bad dataset leaves no cache
behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import VGG16_MIN_IMAGE_SIZE, DataConfig
from trainer.data.crops import CropCache, ImageSurvey, crop_key, ensure_crops, survey_images
from trainer.data.dataset import SPLIT_NAMES, DataReport, Dataset, Split
from trainer.data.expw import FaceRecord, ReadStats, locate_expw, parse_label_bytes
from trainer.data.problems import BOX_PROBLEMS, IMAGE_PROBLEMS, describe
from trainer.data.split import grouped_stratified_split
from trainer.errors import ConfigError, DataError
from trainer.files.cache_lock import CacheLock
from trainer.labels import CLASS_NAMES, NUM_CLASSES

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Source:
    """label.lst read and validated, and the images it names surveyed on disk."""

    label_file: Path
    image_dir: Path
    label_bytes: bytes
    records: list[FaceRecord]
    stats: ReadStats
    images: ImageSurvey


def load_dataset(
    config: DataConfig, image_size: int, *, cache_lock: CacheLock | None = None
) -> Dataset:
    """Loads an ExpW-format dataset as three uint8 splits of ``image_size`` square RGB faces.

    Faces are cropped once per content key (see `trainer.data.crops`) and read back as a memory map;
    each split is a copy of its rows (a view when they are contiguous), so one load reads the
    cached faces once.

    Args:
        config: where the dataset is and how to read and split it.
        image_size: side of the square faces, >= 32 (VGG16's minimum).
        cache_lock: when workers on several machines share ``config.cache_dir``, the lock every
            one of them sees (`trainer.files.cache_lock`), so that the crops and each feature
            set are built once; the dataset carries it to the feature cache. None: file locks.

    Returns:
        The dataset, with a `DataReport` of what was read and skipped.

    Raises:
        ConfigError: ``image_size`` is not an integer >= 32.
        DataError: the dataset is missing or malformed, a class has no faces, a split with a
            non-zero fraction would be empty, or (strict mode) an image is missing or unreadable.
    """
    _check_image_size(image_size)
    source = _read_source(config)
    key = crop_key(
        source.label_bytes, source.images, image_size, config.margin, config.min_confidence
    )
    cache = ensure_crops(
        source.records,
        source.image_dir,
        config.cache_dir,
        key,
        image_size,
        config.margin,
        workers=config.workers,
        strict=config.strict,
        info={
            "label_file": str(source.label_file),
            "image_dir": str(source.image_dir),
            "min_confidence": config.min_confidence,
        },
        cache_lock=cache_lock,
    )
    _check_cache_for_strict(cache, config)
    labels = np.asarray(cache.labels, dtype=np.int64)
    _require_all_classes(labels, f"{source.label_file} (after skipping unreadable images)")
    indices = grouped_stratified_split(labels, cache.groups, config.split, config.split_seed)
    _require_filled_splits(indices, config.split, labels.size)
    splits = {
        name: Split(name, _rows(cache.faces, idx), labels[idx], cache.groups[idx])
        for name, idx in indices.items()
    }
    report = _report(
        source, labels, indices,
        empty_boxes=int(cache.meta.get("empty_boxes", 0)),
        skipped_faces=int(cache.meta.get("skipped_faces", 0)),
        skipped_files=tuple(item["name"] for item in cache.meta.get("skipped_files", [])),
        problems=cache.meta.get("problems", {}),
    )
    return Dataset(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=dataset_fingerprint(key, config),
        image_size=image_size,
        cache_dir=config.cache_dir,
        report=report,
        cache_lock=cache_lock,
    )


def inspect_dataset(
    config: DataConfig, *, on_progress: Callable[[int, int], None] | None = None
) -> DataReport:
    """Checks a dataset without writing anything (``fer-search data check``).

    label.lst is read and validated exactly as `load_dataset` does; then every referenced image
    is decoded (in parallel) and every face's box checked against its image
    (`trainer.data.scan.scan_images`), and the split is computed on the faces that remain, which are
    the faces `load_dataset` would keep.

    Args:
        config: the dataset; in strict mode any problem found is an error.
        on_progress: called with (images done, images in all) as images are checked.

    Raises:
        DataError: as `load_dataset`; in strict mode also any missing, zero-byte, truncated,
            non-image or corrupt file and any box that crops to nothing (one line: the counts
            by kind and the first file names).
    """
    from trainer.data.scan import scan_images

    source = _read_source(config, strict_missing=False)  # every kind counted, then judged
    tally, lost = scan_images(source.image_dir, source.records, config.margin,
                              workers=config.workers, on_progress=on_progress)
    problems = tally.to_dict()
    if config.strict and problems:
        lost_faces = sum(p["faces"] for p in problems.values())
        raise DataError(
            f"{source.image_dir}: expected every image readable and every box on its image, "
            f"found {lost_faces} of {len(source.records)} faces unusable: {describe(problems)} "
            f"(strict mode)"
        )
    kept = [r for r in source.records if (r.image_name, r.line_no) not in lost]
    labels = np.asarray([r.label for r in kept], dtype=np.int64)
    groups = np.asarray([r.image_name for r in kept], dtype=str)
    _require_all_classes(labels, f"{source.label_file} (after skipping unusable faces)")
    indices = grouped_stratified_split(labels, groups, config.split, config.split_seed)
    _require_filled_splits(indices, config.split, labels.size)
    image_kinds = [k for k in problems if k in IMAGE_PROBLEMS]
    return _report(
        source, labels, indices,
        empty_boxes=sum(p["faces"] for k, p in problems.items() if k in BOX_PROBLEMS),
        skipped_faces=sum(problems[k]["faces"] for k in image_kinds),
        skipped_files=tuple(n for k in image_kinds for n in problems[k]["examples"]),
        problems=problems,
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """scikit-learn's "balanced" class weights, ``n / (n_classes * count)``, for Keras' fit.

    Only classes present in ``labels`` get a weight (absent ones never appear in a batch).
    """
    # Computed here as scikit-learn computes it (the same float64 operations, so the same
    # values to the bit; a test compares them): importing scikit-learn and SciPy for it cost
    # every study with class_weight "balanced" about a second.
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("class_weights needs at least one label")
    classes, counts = np.unique(labels, return_counts=True)
    weights = len(labels) / (len(classes) * counts.astype(np.float64))
    return {int(c): float(w) for c, w in zip(classes, weights, strict=True)}


def dataset_fingerprint(crop_key: str, config: DataConfig) -> str:
    """sha256 of the crop cache key and the split settings: equal fingerprints, equal arrays."""
    split = {"split": list(config.split), "split_seed": config.split_seed}
    return hashlib.sha256(f"{crop_key}\n{json.dumps(split, sort_keys=True)}".encode()).hexdigest()


def _check_image_size(image_size: object) -> None:
    if (
        not isinstance(image_size, int)
        or isinstance(image_size, bool)
        or image_size < VGG16_MIN_IMAGE_SIZE
    ):
        raise ConfigError(
            "image_size",
            f"an integer >= {VGG16_MIN_IMAGE_SIZE} (VGG16's minimum input size)",
            image_size,
        )


def _read_source(config: DataConfig, *, strict_missing: bool = True) -> _Source:
    """Locates, reads and validates label.lst and surveys its images; writes nothing.

    In strict mode a missing image is an error here, unless ``strict_missing`` is False (the
    caller judges it with the other problems)."""
    label_file, image_dir = locate_expw(config.root, config.label_file, config.image_dir)
    try:
        label_bytes = label_file.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read ExpW label file {label_file}: {err.strerror or err}") from err
    records, stats = parse_label_bytes(
        label_bytes, label_file, min_confidence=config.min_confidence, strict=config.strict
    )
    if not records:
        detail = (
            f" (all {stats.low_confidence} below min_confidence={config.min_confidence})"
            if stats.low_confidence else ""
        )
        raise DataError(f"{label_file}: expected face lines, found no faces{detail}")
    labels = np.asarray([r.label for r in records], dtype=np.int64)
    filtered = " (after the min_confidence filter)" if config.min_confidence is not None else ""
    _require_all_classes(labels, f"{label_file}{filtered}")
    images = survey_images(image_dir, [r.image_name for r in records])
    if images.missing:
        # Not a warning here: `run` prints one line for every face it skipped, and why.
        logger.info("%d images named in %s are missing from %s (first: %s)",
                    len(images.missing), label_file, image_dir, images.missing[0])
        if config.strict and strict_missing:
            first = next(r for r in records if r.image_name == images.missing[0])
            raise DataError(
                f"{label_file}:{first.line_no}: expected image {image_dir / first.image_name} "
                f"to exist, found it missing ({len(images.missing)} missing in all; strict mode)"
            )
    return _Source(label_file, image_dir, label_bytes, records, stats, images)


def _require_all_classes(labels: np.ndarray, where: str) -> None:
    counts = np.bincount(labels, minlength=NUM_CLASSES)
    absent = [f"{CLASS_NAMES[i]!r} (label {i})" for i in np.flatnonzero(counts == 0)]
    if absent:
        found = ", ".join(f"{name} {int(c)}" for name, c in zip(CLASS_NAMES, counts, strict=True))
        raise DataError(
            f"{where}: expected faces of all {NUM_CLASSES} classes, found none of "
            f"{', '.join(absent)}; class counts: {found}"
        )


def _require_filled_splits(
    indices: dict[str, np.ndarray], fractions: tuple[float, float, float], faces: int
) -> None:
    for name, fraction in zip(SPLIT_NAMES, fractions, strict=True):
        if fraction > 0 and indices[name].size == 0:
            raise DataError(
                f"split {name!r}: expected some faces for fraction {fraction}, found none; "
                f"{faces} faces are too few to split {list(fractions)} by source image"
            )


def _check_cache_for_strict(cache: CropCache, config: DataConfig) -> None:
    # A cache built leniently may have skipped unreadable images; strict mode must not use it
    # silently (the key is the same because strictness does not change good data).
    skipped = cache.meta.get("skipped_files", [])
    if config.strict and skipped:
        first = skipped[0]
        raise DataError(
            f"{first['name']}: expected a readable image, found it {first['reason']} "
            f"({cache.meta.get('skipped_file_count', len(skipped))} images skipped when the "
            f"crop cache {cache.path} was built; strict mode)"
        )


def _rows(faces: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """``faces[idx]``; a zero-copy slice when ``idx`` is a contiguous run."""
    if idx.size and idx[-1] - idx[0] + 1 == idx.size:
        return faces[int(idx[0]):int(idx[-1]) + 1]
    return np.asarray(faces[idx])


def _report(
    source: _Source,
    labels: np.ndarray,
    indices: dict[str, np.ndarray],
    *,
    empty_boxes: int,
    skipped_faces: int,
    skipped_files: tuple[str, ...],
    problems: dict[str, dict] | None = None,
) -> DataReport:
    def counts(values: np.ndarray) -> dict[str, int]:
        found = np.bincount(values, minlength=NUM_CLASSES)
        return {name: int(c) for name, c in zip(CLASS_NAMES, found, strict=True)}

    return DataReport(
        faces=int(labels.size),
        class_counts=counts(labels),
        split_sizes={name: int(idx.size) for name, idx in indices.items()},
        split_class_counts={name: counts(labels[idx]) for name, idx in indices.items()},
        skipped_lines=source.stats.conflicting_lines,
        duplicate_lines=source.stats.duplicate_lines,
        empty_boxes=empty_boxes,
        low_confidence=source.stats.low_confidence,
        skipped_files=tuple(skipped_files),
        skipped_faces=skipped_faces,
        label_file=str(source.label_file),
        image_dir=str(source.image_dir),
        problems=dict(problems or {}),
    )
