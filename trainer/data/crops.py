"""The crop cache: every ExpW face decoded, cropped and resized once, stored as uint8 arrays.

Layout, under ``<cache_dir>/crops/<key>/``:

- ``faces.npy``: (N, S, S, 3) uint8 RGB faces, read back as a memory map;
- ``labels.npy``: (N,) int64 class indices;
- ``groups.npy``: (N,) source image names (faces of one photo share a split);
- ``meta.json``: counts and the first few skipped files, with reasons.

``key`` (see `crop_key`) hashes everything the arrays depend on, so a changed label file, image,
size, margin or confidence filter gives a new entry and an unchanged one is reused. An entry is
built in a temp folder and renamed into place (`trainer.files.atomic.atomic_dir`) under an exclusive
lock (a file lock on ``<cache_dir>/crops/<key>.lock``, or the caller's `cache_lock` when machines
share the cache folder: `trainer.files.cache_lock`), so concurrent processes build it once and a
crashed build never leaves a half-written entry behind.

Images are decoded by a thread pool (Pillow releases the GIL while decoding and resizing), each
image once for all its faces, and written in a fixed order straight into a memory-mapped file, so
memory use stays bounded however big the dataset is.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from trainer.data.expw import FaceRecord
from trainer.data.faces import UnreadableImage, crop_face, read_image
from trainer.data.problems import EMPTY_BOX, OUTSIDE_IMAGE, ProblemTally, box_problem
from trainer.errors import DataError
from trainer.files.atomic import atomic_dir, remove_stale_temps
from trainer.files.cache_lock import CacheLock, entry_lock, record_build, refresh
from trainer.files.disk_space import disk_full_as_error, require_free_space
from trainer.files.npy import shrink_npy

logger = logging.getLogger(__name__)

# Bump when the way crops are made changes, so old cache entries are not reused.
CROP_FORMAT_VERSION = 1
MAX_SKIPPED_NAMES = 20


@dataclass(frozen=True)
class CropCache:
    """One finished cache entry, opened for reading.

    Attributes:
        path: the entry's folder.
        key: its content key.
        faces: (N, S, S, 3) uint8, a read-only memory map.
        labels: (N,) int64.
        groups: (N,) source image names.
        meta: the entry's meta.json.
        built: True when this call built the entry, False when it was reused.
    """

    path: Path
    key: str
    faces: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    meta: dict
    built: bool = False


@dataclass(frozen=True)
class ImageSurvey:
    """The referenced images as found on disk (see `survey_images`)."""

    digest: str
    missing: tuple[str, ...]


def survey_images(image_dir: Path, image_names: Sequence[str]) -> ImageSurvey:
    """Stats every referenced image: a digest of names, sizes and mtimes, and the missing ones.

    Size and mtime stand in for content: hashing 90k images would cost as much as decoding them,
    while any ordinary edit or replacement changes one of the two.
    """
    h = hashlib.sha256()
    missing: list[str] = []
    for name in sorted(set(image_names)):
        try:
            st = os.stat(image_dir / name)
        except FileNotFoundError:
            missing.append(name)
            h.update(f"{name}\0missing\n".encode())
            continue
        h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return ImageSurvey(h.hexdigest(), tuple(missing))


def crop_key(
    label_bytes: bytes,
    images: ImageSurvey,
    image_size: int,
    margin: float,
    min_confidence: float | None,
) -> str:
    """The cache key: sha256 of label.lst's bytes, the images' sizes and mtimes, and settings."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(label_bytes).digest())
    h.update(images.digest.encode())
    settings = {
        "format": CROP_FORMAT_VERSION,
        "image_size": int(image_size),
        "margin": float(margin),
        "min_confidence": None if min_confidence is None else float(min_confidence),
    }
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()


def ensure_crops(
    records: Sequence[FaceRecord],
    image_dir: Path,
    cache_dir: Path,
    key: str,
    image_size: int,
    margin: float,
    *,
    workers: int | None = None,
    strict: bool = False,
    info: dict | None = None,
    cache_lock: CacheLock | None = None,
) -> CropCache:
    """Opens the cache entry ``key``, building it first if no finished one exists.

    Args:
        records: the faces to crop, in the order they should be stored (kept faces keep it).
        image_dir: the folder the records' image names are relative to.
        cache_dir: the cache root; the entry lives in ``cache_dir/crops/key``.
        key: the entry's `crop_key`.
        image_size: side of the square crops.
        margin: context around each box (see `trainer.data.expw.clip_box`).
        workers: decoding threads (None: one per core).
        strict: raise on the first missing or unreadable image instead of skipping its faces.
        info: extra JSON-able facts to record in meta.json (file names, settings).
        cache_lock: the lock every builder of this entry sees, when machines share
            ``cache_dir`` (see `trainer.files.cache_lock`); None: a file lock.

    Returns:
        The opened entry.

    Raises:
        DataError: strict mode and an unreadable image, no face could be read at all, or the
            cache folder cannot be created.
    """
    final = Path(cache_dir) / "crops" / key
    cached = _try_open(final, key)
    if cached is not None:
        return cached
    # Before anything is created: a memory-mapped file the disk cannot back kills the process
    # with SIGBUS when a page of it is first written.
    require_free_space(final.parent, crops_bytes(len(records), image_size), "the crop cache")
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create the crop cache folder {final.parent}: {err}") from err
    with entry_lock(cache_lock, f"crops-{key[:32]}", final.parent / f"{key}.lock"):
        # Whoever held the lock before us (here or on another machine) may have just finished
        # this very entry.
        refresh(final.parent)
        cached = _try_open(final, key)
        if cached is not None:
            return cached
        if final.exists():
            logger.warning("crop cache %s is incomplete or damaged; rebuilding it", final)
            shutil.rmtree(final)
        remove_stale_temps(final)
        logger.info("building crop cache %s (%d faces)", final, len(records))
        record_build("crops", key)
        needed = crops_bytes(len(records), image_size)
        require_free_space(final.parent, needed, "the crop cache")  # others may have written
        with disk_full_as_error(final.parent, needed, "the crop cache"), atomic_dir(final) as tmp:
            _build_crops(records, image_dir, tmp, image_size, margin,
                         workers=workers, strict=strict, meta={"key": key, **(info or {})})
    built = _try_open(final, key)
    if built is None:
        raise DataError(f"the crop cache {final} could not be read back after building it")
    return CropCache(built.path, key, built.faces, built.labels, built.groups, built.meta, True)


def _try_open(path: Path, key: str) -> CropCache | None:
    """The finished entry at ``path``, or None if there is none or it cannot be read."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        faces = np.load(path / "faces.npy", mmap_mode="r")
        labels = np.load(path / "labels.npy")
        groups = np.load(path / "groups.npy")
    except (OSError, ValueError) as err:
        logger.warning("cannot read crop cache %s: %s", path, err)
        return None
    n = int(meta.get("faces", -1))
    if faces.ndim != 4 or not (faces.shape[0] == labels.shape[0] == groups.shape[0] == n):
        logger.warning("crop cache %s has inconsistent shapes", path)
        return None
    return CropCache(path, key, faces, labels, groups, meta, built=False)


@dataclass
class _ImageResult:
    """What one worker made of one image."""

    name: str
    crops: np.ndarray | None = None  # (k, S, S, 3) for the faces kept
    kept: list[FaceRecord] = field(default_factory=list)
    bad_boxes: list[str] = field(default_factory=list)  # EMPTY_BOX / OUTSIDE_IMAGE per face
    error: str | None = None  # a `trainer.data.faces.IMAGE_PROBLEMS` kind
    detail: str = ""


def _decode_image(path: Path):
    """`trainer.data.faces.read_image` (tests replace this to watch or break decoding)."""
    return read_image(path)


def _crop_image(
    image_dir: Path, name: str, faces: list[FaceRecord], image_size: int, margin: float
) -> _ImageResult:
    """Decodes one image and returns the crops of its faces (runs in a worker thread)."""
    result = _ImageResult(name)
    try:
        img = _decode_image(image_dir / name)
    except UnreadableImage as err:
        result.error, result.detail = err.kind, err.detail
        return result
    crops = []
    for face in faces:
        crop = crop_face(img, face.box, image_size, margin)  # the one path, also predict's
        if crop is None:
            result.bad_boxes.append(box_problem(face.box))
            continue
        crops.append(crop)
        result.kept.append(face)
    if crops:
        result.crops = np.stack(crops)
    return result


def _group_by_image(records: Sequence[FaceRecord]) -> dict[str, list[FaceRecord]]:
    by_image: dict[str, list[FaceRecord]] = {}
    for record in records:  # dicts keep first-seen order: the output order is fixed
        by_image.setdefault(record.image_name, []).append(record)
    return by_image


def _ordered_results(
    image_dir: Path,
    by_image: dict[str, list[FaceRecord]],
    image_size: int,
    margin: float,
    workers: int,
) -> Iterator[_ImageResult]:
    """Crops images in parallel, yielding results in input order with few images in flight."""
    window = 4 * workers
    pending: collections.deque[Future[_ImageResult]] = collections.deque()
    items = iter(by_image.items())
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="expw-crop")
    try:
        for name, faces in items:
            pending.append(pool.submit(_crop_image, image_dir, name, faces, image_size, margin))
            if len(pending) >= window:
                break
        while pending:
            # Taking the oldest first keeps the output order fixed whatever the thread timing;
            # the window bounds how many decoded crops wait in memory.
            result = pending.popleft().result()
            next_item = next(items, None)
            if next_item is not None:
                name, faces = next_item
                pending.append(
                    pool.submit(_crop_image, image_dir, name, faces, image_size, margin)
                )
            yield result
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class _CropWriter:
    """Appends each image's crops to the memory-mapped faces file and tallies what was skipped."""

    def __init__(self, faces_path: Path, capacity: int, image_size: int) -> None:
        self.faces_path = faces_path
        self.faces = np.lib.format.open_memmap(
            faces_path, mode="w+", dtype=np.uint8, shape=(capacity, image_size, image_size, 3)
        )
        self.labels = np.empty(capacity, dtype=np.int64)
        self.groups: list[str] = []
        self.rows = 0
        self.problems = ProblemTally()
        self.skipped_faces = 0  # faces of unreadable images
        self.skipped: list[dict[str, str]] = []

    def add(self, result: _ImageResult) -> None:
        for kind in result.bad_boxes:
            self.problems.add(kind, result.name)
        k = len(result.kept)
        if k:
            self.faces[self.rows:self.rows + k] = result.crops
            self.labels[self.rows:self.rows + k] = [face.label for face in result.kept]
            self.groups.extend([result.name] * k)
            self.rows += k

    def skip(self, result: _ImageResult, faces: int) -> None:
        self.problems.add(result.error or "corrupt", result.name, faces)
        self.skipped_faces += faces
        if len(self.skipped) < MAX_SKIPPED_NAMES:
            reason = result.error + (f" ({result.detail})" if result.detail else "")
            self.skipped.append({"name": result.name, "reason": reason})

    @property
    def empty_boxes(self) -> int:
        return sum(self.problems.kinds[k].faces for k in (EMPTY_BOX, OUTSIDE_IMAGE)
                   if k in self.problems.kinds)

    @property
    def skipped_count(self) -> int:
        return sum(1 for _ in self.skipped_names())

    def skipped_names(self):
        return (n for k, p in self.problems.kinds.items() if k not in (EMPTY_BOX, OUTSIDE_IMAGE)
                for n in p.seen)

    def close(self, out_dir: Path) -> None:
        """Flushes the faces, cuts them to the rows written, saves labels and groups."""
        capacity = self.faces.shape[0]
        self.faces.flush()
        del self.faces  # unmap before the file is shrunk
        if self.rows < capacity:
            shrink_npy(self.faces_path, self.rows)
        np.save(out_dir / "labels.npy", self.labels[:self.rows], allow_pickle=False)
        np.save(out_dir / "groups.npy", np.asarray(self.groups, dtype=str), allow_pickle=False)


def crops_bytes(faces: int, image_size: int) -> int:
    """Disk space a crop cache entry of ``faces`` faces needs (faces.npy dominates)."""
    return faces * (image_size * image_size * 3 + 8 + 64) + 64 * 1024


def _build_crops(
    records: Sequence[FaceRecord],
    image_dir: Path,
    out_dir: Path,
    image_size: int,
    margin: float,
    *,
    workers: int | None,
    strict: bool,
    meta: dict,
) -> dict:
    """Writes faces.npy, labels.npy, groups.npy and meta.json for ``records`` into ``out_dir``."""
    started = time.monotonic()
    by_image = _group_by_image(records)
    workers = max(1, min(workers or os.cpu_count() or 1, len(by_image) or 1))
    writer = _CropWriter(out_dir / "faces.npy", len(records), image_size)
    progress_every = max(1, len(by_image) // 20)
    ordered = _ordered_results(image_dir, by_image, image_size, margin, workers)
    with contextlib.closing(ordered):  # stops the pool at once if an error escapes the loop
        for done, result in enumerate(ordered, start=1):
            if result.error is None:
                writer.add(result)
            elif strict:
                raise DataError(
                    f"{image_dir / result.name}: expected a readable image, found it "
                    f"{result.error}{f' ({result.detail})' if result.detail else ''} "
                    f"(strict mode)"
                )
            else:
                writer.skip(result, len(by_image[result.name]))
            if done % progress_every == 0:
                logger.info("cropped %d/%d images", done, len(by_image))
    if writer.rows == 0:
        first = writer.skipped[0] if writer.skipped else None
        raise DataError(
            f"{image_dir}: expected at least one croppable face, found none in "
            f"{len(by_image)} images ({writer.skipped_count} unreadable, "
            f"{writer.empty_boxes} empty boxes"
            + (f"; first unreadable: {first['name']} ({first['reason']})" if first else "")
            + ")"
        )
    writer.close(out_dir)
    meta = {
        **meta,
        "format_version": CROP_FORMAT_VERSION,
        "faces": writer.rows,
        "records": len(records),
        "images": len(by_image),
        "image_size": image_size,
        "margin": margin,
        "empty_boxes": writer.empty_boxes,
        "problems": writer.problems.to_dict(),
        "skipped_faces": writer.skipped_faces,
        "skipped_file_count": writer.skipped_count,
        "skipped_files": writer.skipped,
        "build_seconds": round(time.monotonic() - started, 3),
    }
    # meta.json last: only a folder holding it counts as finished.
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    logger.info(
        "cropped %d faces from %d images in %.1fs (%d images skipped)",
        writer.rows, len(by_image), meta["build_seconds"], writer.skipped_count,
    )
    return meta
