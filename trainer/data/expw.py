"""Reads the ExpW (Expression in-the-Wild) annotation file, ``label.lst``.

One face per line, 8 fields separated by whitespace::

    image_name face_id_in_image face_box_top face_box_left face_box_right face_box_bottom \
face_box_cofidence expression_label
    angry_actor_104.jpg 0 28 113 226 141 22.9362 0

so the face is rows ``top:bottom`` and columns ``left:right`` of the image (note the unusual
top, left, right, bottom order), the 7th field is a raw detector score (about 0.2 to 140) and the
8th is the expression, an index into `trainer.labels.CLASS_NAMES`.

A line that does not fit this format means the file is not ExpW, so it is fatal in every mode.
Quirks of the real file are handled and counted instead: blank lines, CRLF endings, duplicate
lines, several faces per image, boxes running past the image's edge (see `clip_box`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from trainer.errors import DataError
from trainer.labels import CLASS_NAMES, NUM_CLASSES

LABEL_FILE_PLACES = ("label.lst", "label/label.lst")
IMAGE_DIR_PLACES = ("image/origin", "origin", "Images")
FIELDS = (
    "image_name", "face_id", "top", "left", "right", "bottom", "confidence", "label",
)
_FORMAT = " ".join(FIELDS)


@dataclass(frozen=True)
class FaceRecord:
    """One annotated face: rows ``top:bottom``, columns ``left:right`` of ``image_name``."""

    image_name: str
    face_id: int
    top: int
    left: int
    right: int
    bottom: int
    confidence: float
    label: int
    line_no: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        """The box as label.lst orders it: (top, left, right, bottom)."""
        return (self.top, self.left, self.right, self.bottom)


@dataclass(frozen=True)
class ReadStats:
    """What `read_label_file` counted while reading.

    Attributes:
        lines: lines in the file, blank ones included.
        blank_lines: empty or whitespace-only lines (ignored).
        duplicate_lines: lines repeating an earlier face (same image, box and label); dropped.
        conflicting_lines: lines giving an earlier face (same image and box) another label; the
            first label is kept. In strict mode they are an error.
        low_confidence: faces dropped because their detector score was below ``min_confidence``.
        faces: faces kept.
        images: distinct images among the kept faces.
    """

    lines: int = 0
    blank_lines: int = 0
    duplicate_lines: int = 0
    conflicting_lines: int = 0
    low_confidence: int = 0
    faces: int = 0
    images: int = 0


def locate_expw(
    root: str | Path,
    label_file: str | Path | None = None,
    image_dir: str | Path | None = None,
) -> tuple[Path, Path]:
    """Finds ExpW's label.lst and image folder.

    Args:
        root: the dataset folder.
        label_file: explicit label.lst; relative paths are tried as given, then under ``root``.
            Default: ``root/label.lst`` or ``root/label/label.lst``.
        image_dir: explicit image folder, same resolution rules. Default: the first of
            ``root/image/origin``, ``root/origin``, ``root/Images`` that exists.

    Returns:
        (label file, image folder).

    Raises:
        DataError: ``root`` is missing, or no label file / image folder is where it was looked for.
    """
    root = Path(root)
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"ExpW root {root} {what}; expected a folder holding label.lst")
    label_path = _find(root, label_file, LABEL_FILE_PLACES, want_dir=False, what="label file")
    image_path = _find(root, image_dir, IMAGE_DIR_PLACES, want_dir=True, what="image folder")
    return label_path, image_path


def _find(
    root: Path, given: str | Path | None, places: tuple[str, ...], *, want_dir: bool, what: str
) -> Path:
    exists = Path.is_dir if want_dir else Path.is_file
    if given is not None:
        candidates = [Path(given)]
        if not Path(given).is_absolute():
            candidates.append(root / given)
    else:
        candidates = [root / place for place in places]
    for candidate in candidates:
        if exists(candidate):
            return candidate
    looked = ", ".join(str(c) for c in candidates)
    kind = "folder" if want_dir else "file"
    raise DataError(f"no ExpW {what} found: expected a {kind} at {looked}")


def read_label_file(
    path: str | Path, *, min_confidence: float | None = None, strict: bool = False
) -> tuple[list[FaceRecord], ReadStats]:
    """Reads and validates an ExpW label.lst.

    Args:
        path: the label file.
        min_confidence: drop faces whose detector score is below this (None keeps all).
        strict: make lines that give one face two labels an error instead of skipping them.

    Returns:
        (faces in file order, counts of what was dropped).

    Raises:
        DataError: the file cannot be read, or a line is not in ExpW's format (wrong field count,
            a non-numeric box or score, a label outside 0..6, an unsafe image name); the message
            names ``file:line``, what was expected and what was found.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read ExpW label file {path}: {err.strerror or err}") from err
    return parse_label_bytes(data, path, min_confidence=min_confidence, strict=strict)


def parse_label_bytes(
    data: bytes, source: str | Path, *, min_confidence: float | None = None, strict: bool = False
) -> tuple[list[FaceRecord], ReadStats]:
    """`read_label_file` on bytes already read (``source`` names them in errors)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataError(
            f"{source}: expected a UTF-8 text file, found undecodable bytes at offset {err.start}"
        ) from err
    lines = text.splitlines()  # handles \n, \r\n and a missing final newline alike
    blank = 0
    parsed: list[FaceRecord] = []
    for line_no, line in enumerate(lines, start=1):
        if not line.strip():
            blank += 1
            continue
        parsed.append(parse_line(line, line_no, source))
    unique, duplicates, conflicts = _drop_duplicates(parsed, source, strict)
    kept, low = _filter_confidence(unique, min_confidence)
    stats = ReadStats(
        lines=len(lines),
        blank_lines=blank,
        duplicate_lines=duplicates,
        conflicting_lines=conflicts,
        low_confidence=low,
        faces=len(kept),
        images=len({r.image_name for r in kept}),
    )
    return kept, stats


def parse_line(line: str, line_no: int, source: str | Path) -> FaceRecord:
    """Parses one non-blank label.lst line.

    Raises:
        DataError: ``source:line_no: expected ..., found ...``.
    """
    fields = line.split()
    where = f"{source}:{line_no}"
    if len(fields) != len(FIELDS):
        raise DataError(
            f"{where}: expected {len(FIELDS)} whitespace-separated fields ({_FORMAT}), "
            f"found {len(fields)}: {line.strip()!r}"
        )
    name = fields[0]
    _check_image_name(name, where)
    face_id = _integer(fields[1], "face_id", where)
    top, left, right, bottom = (
        _integer(value, field, where)
        for value, field in zip(fields[2:6], FIELDS[2:6], strict=True)
    )
    confidence = _number(fields[6], "confidence", where)
    label = _integer(fields[7], "label", where)
    if not 0 <= label < NUM_CLASSES:
        raise DataError(
            f"{where}: expected label (8th field) in 0..{NUM_CLASSES - 1} "
            f"({', '.join(CLASS_NAMES)}), found {fields[7]!r}"
        )
    return FaceRecord(name, face_id, top, left, right, bottom, confidence, label, line_no)


def _check_image_name(name: str, where: str) -> None:
    # Names are joined to the image folder; one that climbs out of it is not an ExpW name.
    if name.startswith(("/", "\\")) or ".." in name.replace("\\", "/").split("/"):
        raise DataError(
            f"{where}: expected image_name (1st field) to be a file name inside the image folder, "
            f"found {name!r}"
        )


def _number(text: str, field: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise DataError(f"{where}: expected {field} to be a finite number, found {text!r}")
    return value


def _integer(text: str, field: str, where: str) -> int:
    # Some copies of label.lst write coordinates as "28.0"; a fraction there is not ExpW.
    value = _number(text, field, where)
    if value != int(value):
        raise DataError(f"{where}: expected {field} to be a whole number, found {text!r}")
    return int(value)


def _drop_duplicates(
    records: Iterable[FaceRecord], source: str | Path, strict: bool
) -> tuple[list[FaceRecord], int, int]:
    # A face is its image and box; repeating it (same label) is a duplicate, giving it another
    # label is a conflict. Either way the first line wins so the result follows the file's order.
    seen: dict[tuple[str, int, int, int, int], FaceRecord] = {}
    kept: list[FaceRecord] = []
    duplicates = conflicts = 0
    for record in records:
        key = (record.image_name, *record.box)
        first = seen.get(key)
        if first is None:
            seen[key] = record
            kept.append(record)
        elif first.label == record.label:
            duplicates += 1
        else:
            if strict:
                raise DataError(
                    f"{source}:{record.line_no}: expected one label per face, found label "
                    f"{record.label} for the face at line {first.line_no}, labelled "
                    f"{first.label} there"
                )
            conflicts += 1
    return kept, duplicates, conflicts


def _filter_confidence(
    records: list[FaceRecord], min_confidence: float | None
) -> tuple[list[FaceRecord], int]:
    if min_confidence is None:
        return records, 0
    kept = [r for r in records if r.confidence >= min_confidence]
    return kept, len(records) - len(kept)


def clip_box(
    record: FaceRecord, width: int, height: int, margin: float = 0.0
) -> tuple[int, int, int, int] | None:
    """`clip_region` of a face record's box."""
    return clip_region(record.box, width, height, margin)


def clip_region(
    box: tuple[int, int, int, int] | None, width: int, height: int, margin: float = 0.0
) -> tuple[int, int, int, int] | None:
    """A face's crop region, widened by ``margin`` and clipped to a ``width`` x ``height`` image.

    Args:
        box: (top, left, right, bottom) as annotated (label.lst's order); None means the
            whole image.
        width, height: the decoded image's size in pixels.
        margin: context added on each side, as a fraction of the box's height (top and bottom)
            and width (left and right); 0 keeps the annotated box.

    Returns:
        (top, left, bottom, right) with ``bottom`` and ``right`` exclusive, ready for
        ``array[top:bottom, left:right]``; None when the box is empty (zero or negative size as
        annotated, or lying entirely outside the image).
    """
    if box is None:
        return 0, 0, height, width
    top, left, right, bottom = box
    box_h, box_w = bottom - top, right - left
    if box_h <= 0 or box_w <= 0:
        return None
    pad_h, pad_w = round(margin * box_h), round(margin * box_w)
    top, left = max(0, top - pad_h), max(0, left - pad_w)
    bottom, right = min(height, bottom + pad_h), min(width, right + pad_w)
    if bottom <= top or right <= left:
        return None
    return top, left, bottom, right
