"""From an ExpW-format folder to a `Dataset`: read, validate, crop once (cached), split.

Every check that needs only label.lst and the file system (layout, line format, classes present,
missing images in strict mode) runs before anything is written, so a bad dataset leaves no cache
behind.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.config import VGG16_MIN_IMAGE_SIZE, DataConfig
from trainer.crops import CropCache, ImageSurvey, crop_key, ensure_crops, survey_images
from trainer.dataset import SPLIT_NAMES, DataReport, Dataset, Split
from trainer.errors import ConfigError, DataError
from trainer.expw import FaceRecord, ReadStats, locate_expw, parse_label_bytes
from trainer.labels import CLASS_NAMES, NUM_CLASSES
from trainer.split import grouped_stratified_split

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


def load_dataset(config: DataConfig, image_size: int) -> Dataset:
    """Loads an ExpW-format dataset as three uint8 splits of ``image_size`` square RGB faces.

    Faces are cropped once per content key (see `trainer.crops`) and read back as a memory map;
    each split is a copy of its rows (a view when they are contiguous), so one load reads the
    cached faces once.

    Args:
        config: where the dataset is and how to read and split it.
        image_size: side of the square faces, >= 32 (VGG16's minimum).

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
    )
    return Dataset(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        fingerprint=dataset_fingerprint(key, config),
        image_size=image_size,
        cache_dir=config.cache_dir,
        report=report,
    )


def inspect_dataset(config: DataConfig) -> DataReport:
    """Checks a dataset without decoding images or writing anything (``fer-search data check``).

    A reader-only pass: label.lst is read and validated exactly as `load_dataset` does, every
    referenced image is stat'ed (missing ones are counted as skipped, or raise in strict mode),
    and the split is computed on the remaining faces. Corrupt-but-present images and boxes that
    fall outside their image are only found when the faces are cropped, so they are not counted
    here (``empty_boxes`` counts boxes that are empty as annotated). Raises the same errors as
    `load_dataset` for the same inputs.

    Returns:
        The report `load_dataset` would give, up to the limits above.
    """
    source = _read_source(config)
    missing = set(source.images.missing)
    kept = [r for r in source.records if r.image_name not in missing]
    non_empty = [r for r in kept if r.bottom > r.top and r.right > r.left]
    labels = np.asarray([r.label for r in non_empty], dtype=np.int64)
    groups = np.asarray([r.image_name for r in non_empty], dtype=str)
    _require_all_classes(labels, f"{source.label_file} (after skipping missing images)")
    indices = grouped_stratified_split(labels, groups, config.split, config.split_seed)
    _require_filled_splits(indices, config.split, labels.size)
    return _report(
        source, labels, indices,
        empty_boxes=len(kept) - len(non_empty),
        skipped_faces=len(source.records) - len(kept),
        skipped_files=source.images.missing[:20],
    )


def class_weights(labels: np.ndarray) -> dict[int, float]:
    """scikit-learn's "balanced" class weights, ``n / (n_classes * count)``, for Keras' fit.

    Only classes present in ``labels`` get a weight (absent ones never appear in a batch).
    """
    # Imported here: scikit-learn (and SciPy) take most of a second to import, and only training
    # with class_weight="balanced" needs them.
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError("class_weights needs at least one label")
    classes = np.unique(labels)
    weights = compute_class_weight("balanced", classes=classes, y=labels)
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


def _read_source(config: DataConfig) -> _Source:
    """Locates, reads and validates label.lst and surveys its images; writes nothing."""
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
        logger.warning("%d images named in %s are missing from %s (first: %s)",
                       len(images.missing), label_file, image_dir, images.missing[0])
        if config.strict:
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
    )
