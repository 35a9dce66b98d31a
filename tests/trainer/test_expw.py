"""The label.lst reader, box clipping and locate_expw, on literal lines in ExpW's real format."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.conftest import BACKGROUND, draw_image, save_jpeg
from trainer.data.crops import ensure_crops
from trainer.data.expw import FaceRecord, clip_box, clip_region, locate_expw, read_label_file
from trainer.errors import DataError

# The example line from ExpW's readme: rows 28..141, columns 113..226, score 22.9, label 0.
REAL_LINE = "angry_actor_104.jpg 0 28 113 226 141 22.9362 0"
RED = (230, 20, 20)


def write_lst(tmp_path: Path, text: str | bytes, name: str = "label.lst") -> Path:
    path = tmp_path / name
    if isinstance(text, str):
        text = text.encode()
    path.write_bytes(text)
    return path


def read(tmp_path: Path, text: str | bytes, **kwargs: object):
    return read_label_file(write_lst(tmp_path, text), **kwargs)


def record(top: int, left: int, right: int, bottom: int) -> FaceRecord:
    return FaceRecord("x.jpg", 0, top, left, right, bottom, 1.0, 0, 1)


# --- reading the real format -------------------------------------------------------------------


def test_real_line_fields_in_expw_order(tmp_path: Path) -> None:
    records, stats = read(tmp_path, REAL_LINE + "\n")
    assert records == [
        FaceRecord("angry_actor_104.jpg", 0, top=28, left=113, right=226, bottom=141,
                   confidence=22.9362, label=0, line_no=1)
    ]
    assert stats.faces == 1 and stats.images == 1


def test_label_is_the_eighth_field_not_the_confidence(tmp_path: Path) -> None:
    # The 7th field (3.0) would be a valid label too: the reader must take the 8th (5).
    records, _ = read(tmp_path, "surprised_x.jpg 2 10 20 60 70 3.0 5\n")
    assert records[0].label == 5
    assert records[0].confidence == 3.0
    assert records[0].face_id == 2


def test_real_line_crops_the_annotated_region(tmp_path: Path) -> None:
    # Red exactly on rows 28..141 and columns 113..226, grey elsewhere: reading the box in any
    # other order (e.g. left, top, right, bottom) would pull grey into the crop.
    image_dir = tmp_path / "image" / "origin"
    save_jpeg(image_dir / "angry_actor_104.jpg",
              draw_image((260, 180), [((28, 113, 226, 141), RED)]))
    records, _ = read(tmp_path, REAL_LINE + "\n")
    assert clip_box(records[0], 260, 180, 0.0) == (28, 113, 141, 226)

    cache = ensure_crops(records, image_dir, tmp_path / "cache", "k", 32, 0.0, workers=1)
    face = cache.faces[0].astype(int)
    assert cache.faces.shape == (1, 32, 32, 3) and cache.labels.tolist() == [0]
    reddish = (face[..., 0] > 180) & (face[..., 1] < 80) & (face[..., 2] < 80)
    assert reddish.mean() > 0.95
    assert np.abs(face[4:-4, 4:-4] - np.array(RED)).max() < 25


def test_margin_adds_context_from_around_the_box(tmp_path: Path) -> None:
    image_dir = tmp_path / "img"
    save_jpeg(image_dir / "a.jpg", draw_image((100, 100), [((25, 25, 75, 75), RED)]))
    rec = FaceRecord("a.jpg", 0, 25, 25, 75, 75, 1.0, 0, 1)
    assert clip_box(rec, 100, 100, 0.2) == (15, 15, 85, 85)
    cache = ensure_crops([rec], image_dir, tmp_path / "cache", "k", 35, 0.2, workers=1)
    face = cache.faces[0].astype(int)
    assert np.abs(face[1, 1] - np.array(BACKGROUND)).max() < 30  # the margin is grey
    assert np.abs(face[17, 17] - np.array(RED)).max() < 25


def test_float_coordinates_are_accepted(tmp_path: Path) -> None:
    records, _ = read(tmp_path, "a.jpg 0.0 28.0 113.0 226.0 141.0 22.9362 0.0\n")
    assert records[0].box == (28, 113, 226, 141)
    assert isinstance(records[0].top, int) and isinstance(records[0].label, int)


def test_several_faces_per_image_are_kept(tmp_path: Path) -> None:
    text = "a.jpg 0 0 0 10 10 5 3\na.jpg 1 20 20 40 40 5 6\nb.jpg 0 0 0 10 10 5 1\n"
    records, stats = read(tmp_path, text)
    assert [(r.image_name, r.face_id, r.label) for r in records] == [
        ("a.jpg", 0, 3), ("a.jpg", 1, 6), ("b.jpg", 0, 1)
    ]
    assert stats.faces == 3 and stats.images == 2


def test_crlf_blank_and_trailing_lines(tmp_path: Path) -> None:
    text = b"a.jpg 0 0 0 10 10 5 3\r\n\r\n   \r\nb.jpg 0 0 0 10 10 5 1\r\n\r\n\r\n"
    records, stats = read(tmp_path, text)
    assert [r.image_name for r in records] == ["a.jpg", "b.jpg"]
    assert [r.line_no for r in records] == [1, 4]
    assert records[1].label == 1
    assert stats.blank_lines == 4


def test_no_final_newline_and_tabs(tmp_path: Path) -> None:
    records, _ = read(tmp_path, "a.jpg\t0  0 0 10 10 5 3")
    assert records[0].label == 3


def test_exact_duplicates_dropped_and_counted(tmp_path: Path) -> None:
    text = f"{REAL_LINE}\n{REAL_LINE}\nb.jpg 0 0 0 10 10 5 1\n{REAL_LINE}\n"
    records, stats = read(tmp_path, text)
    assert [r.line_no for r in records] == [1, 3]
    assert stats.duplicate_lines == 2


def test_one_face_two_labels_keeps_the_first_or_fails_in_strict_mode(tmp_path: Path) -> None:
    text = "a.jpg 0 0 0 10 10 5 3\na.jpg 0 0 0 10 10 5 4\n"
    records, stats = read(tmp_path, text)
    assert [r.label for r in records] == [3]
    assert stats.conflicting_lines == 1
    with pytest.raises(DataError, match=r"label\.lst:2: expected one label per face"):
        read(tmp_path, text, strict=True)


def test_min_confidence_drops_and_counts(tmp_path: Path) -> None:
    text = "a.jpg 0 0 0 10 10 0.2 3\na.jpg 1 0 0 20 20 22.9 3\nb.jpg 0 0 0 10 10 140 1\n"
    records, stats = read(tmp_path, text, min_confidence=1.0)
    assert [r.confidence for r in records] == [22.9, 140.0]
    assert stats.low_confidence == 1
    records, stats = read(tmp_path, text)
    assert len(records) == 3 and stats.low_confidence == 0


# --- box clipping ------------------------------------------------------------------------------


def test_boxes_past_the_edge_are_clipped() -> None:
    assert clip_box(record(-10, -5, 300, 200), 260, 180) == (0, 0, 180, 260)
    assert clip_box(record(170, 250, 290, 210), 260, 180) == (170, 250, 180, 260)


def test_margin_is_a_fraction_of_box_size_per_side() -> None:
    # 40 high, 100 wide: 10% adds 4 rows and 10 columns on each side.
    assert clip_box(record(50, 50, 150, 90), 300, 300, 0.1) == (46, 40, 94, 160)
    assert clip_box(record(2, 3, 103, 42), 300, 300, 0.1) == (0, 0, 46, 113)


def test_empty_boxes_give_none() -> None:
    assert clip_box(record(10, 10, 10, 20), 100, 100) is None  # zero width
    assert clip_box(record(20, 10, 30, 10), 100, 100) is None  # bottom above top
    assert clip_box(record(150, 150, 190, 190), 100, 100) is None  # outside the image
    assert clip_box(record(-30, -30, -5, -5), 100, 100, 0.1) is None


def test_empty_boxes_counted_by_the_crop_cache(tmp_path: Path) -> None:
    image_dir = tmp_path / "img"
    save_jpeg(image_dir / "a.jpg", draw_image((50, 50), []))
    records = [FaceRecord("a.jpg", 0, 5, 5, 40, 40, 1.0, 3, 1),
               FaceRecord("a.jpg", 1, 60, 60, 90, 90, 1.0, 3, 2)]
    cache = ensure_crops(records, image_dir, tmp_path / "cache", "k", 32, 0.0, workers=1)
    assert cache.faces.shape[0] == 1
    assert cache.meta["empty_boxes"] == 1
    assert cache.meta["problems"] == {
        "box outside its image": {"files": 1, "faces": 1, "examples": ["a.jpg"]}
    }


def test_clip_region_takes_a_bare_box_or_the_whole_image() -> None:
    assert clip_region((-10, -5, 300, 200), 260, 180) == (0, 0, 180, 260)
    assert clip_region(None, 260, 180) == (0, 0, 180, 260)
    assert clip_region((10, 10, 10, 20), 100, 100) is None


# --- malformed files: one clear, fatal error naming file:line ---------------------------------


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("a.jpg 0 28 113 226 141 22.9", r"expected 8 whitespace-separated fields .* found 7"),
        ("a.jpg 0 28 113 226 141 22.9 0 1", r"expected 8 whitespace-separated fields .* found 9"),
        ("a.jpg 0 28 113 226 141 22.9 7", r"expected label \(8th field\) in 0\.\.6 .* found '7'"),
        ("a.jpg 0 28 113 226 141 22.9 -1", r"expected label \(8th field\) in 0\.\.6"),
        ("a.jpg 0 28 abc 226 141 22.9 0", r"expected left to be a finite number, found 'abc'"),
        ("a.jpg 0 28.5 113 226 141 22.9 0", r"expected top to be a whole number, found '28.5'"),
        ("a.jpg 0 28 113 226 141 high 0", r"expected confidence to be a finite number"),
        ("a.jpg 0 28 113 226 141 nan 0", r"expected confidence to be a finite number"),
        ("a.jpg 0 28 113 226 141 22.9 angry", r"expected label to be a finite number"),
        ("../../etc/passwd 0 28 113 226 141 22.9 0", r"expected image_name .* inside the image"),
    ],
)
def test_malformed_line_is_one_clear_error(tmp_path: Path, line: str, message: str) -> None:
    text = f"{REAL_LINE}\n\n{line}\nb.jpg 0 0 0 10 10 5 1\n"
    for strict in (False, True):
        with pytest.raises(DataError, match=message) as info:
            read(tmp_path, text, strict=strict)
        text_of_error = str(info.value)
        assert text_of_error.startswith(f"{tmp_path / 'label.lst'}:3: ")
        assert "\n" not in text_of_error


def test_not_utf8_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"label\.lst: expected a UTF-8 text file"):
        read(tmp_path, b"\xff\xfe\x00a.jpg 0 0 0 1 1 1 1\n")


def test_unreadable_label_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"cannot read ExpW label file .*nope\.lst"):
        read_label_file(tmp_path / "nope.lst")


# --- locating label.lst and the images ---------------------------------------------------------


@pytest.mark.parametrize("image_dir", ["image/origin", "origin", "Images"])
@pytest.mark.parametrize("label_place", ["label.lst", "label/label.lst"])
def test_locate_expw_layouts(tmp_path: Path, image_dir: str, label_place: str) -> None:
    (tmp_path / image_dir).mkdir(parents=True)
    (tmp_path / label_place).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / label_place).write_text(REAL_LINE + "\n")
    assert locate_expw(tmp_path) == (tmp_path / label_place, tmp_path / image_dir)


def test_locate_expw_prefers_the_official_layout(tmp_path: Path) -> None:
    for folder in ("Images", "origin", "image/origin"):
        (tmp_path / folder).mkdir(parents=True)
    (tmp_path / "label.lst").write_text(REAL_LINE)
    assert locate_expw(tmp_path)[1] == tmp_path / "image" / "origin"


def test_locate_expw_explicit_paths(tmp_path: Path) -> None:
    (tmp_path / "ann").mkdir()
    (tmp_path / "ann" / "faces.txt").write_text(REAL_LINE)
    (tmp_path / "pics").mkdir()
    # Relative paths are tried under root too; absolute ones are taken as given.
    assert locate_expw(tmp_path, "ann/faces.txt", "pics") == (
        tmp_path / "ann" / "faces.txt", tmp_path / "pics"
    )
    assert locate_expw(tmp_path, tmp_path / "ann" / "faces.txt", tmp_path / "pics")[1] == (
        tmp_path / "pics"
    )
    with pytest.raises(DataError, match=r"no ExpW image folder found: expected a folder at .*nah"):
        locate_expw(tmp_path, "ann/faces.txt", "nah")


def test_locate_expw_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ExpW root .*missing does not exist"):
        locate_expw(tmp_path / "missing")
    (tmp_path / "file").write_text("")
    with pytest.raises(DataError, match=r"ExpW root .*file is not a folder"):
        locate_expw(tmp_path / "file")


def test_locate_expw_no_label_file_names_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "image" / "origin").mkdir(parents=True)
    with pytest.raises(DataError) as info:
        locate_expw(tmp_path)
    message = str(info.value)
    assert message.startswith("no ExpW label file found: expected a file at ")
    assert str(tmp_path / "label.lst") in message
    assert str(tmp_path / "label" / "label.lst") in message


def test_locate_expw_no_image_folder_names_where_it_looked(tmp_path: Path) -> None:
    (tmp_path / "label.lst").write_text(REAL_LINE)
    with pytest.raises(DataError) as info:
        locate_expw(tmp_path)
    message = str(info.value)
    for place in ("image/origin", "origin", "Images"):
        assert str(tmp_path / place) in message
