"""One face from a file (trainer.data.faces), the problems found on the way
(trainer.data.problems), the crop cache's use of both, and its free-space check before a
memory-mapped write."""

from __future__ import annotations

import errno
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainer
from tests.infra import hooks
from trainer.config import DataConfig
from trainer.data import crops
from trainer.data.faces import UnreadableImage, crop_face, image_size, read_image
from trainer.data.loading import inspect_dataset, load_dataset
from trainer.data.problems import ProblemTally, summary
from trainer.errors import DataError, DiskFull
from trainer.files.disk_space import disk_full_as_error, free_bytes, require_free_space

SIZE = 32


def picture(path: Path, width: int = 40, height: int = 30) -> np.ndarray:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


# ------------------------------------------------------------------------------- read_image


@pytest.mark.parametrize(
    "damage, kind",
    [
        (lambda p: p.unlink(), "missing"),
        (lambda p: p.write_bytes(b""), "zero-byte"),
        (lambda p: p.write_bytes(p.read_bytes()[:200]), "truncated"),
        (lambda p: p.write_text("not a picture"), "not an image"),
    ],
)
def test_unreadable_images_are_sorted_by_kind(tmp_path: Path, damage, kind: str) -> None:
    path = tmp_path / "face.jpg"
    Image.fromarray(np.full((64, 64, 3), 99, dtype=np.uint8)).save(path, quality=95)
    damage(path)
    with pytest.raises(UnreadableImage) as caught:
        read_image(path)
    assert caught.value.kind == kind
    assert str(path) in str(caught.value)
    with pytest.raises(UnreadableImage):
        image_size(path)


def test_a_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(UnreadableImage, match="not an image"):
        read_image(tmp_path)


# -------------------------------------------------------------------------------- crop_face


def test_crop_face_clips_to_the_image_and_resizes_in_one_bilinear_pass(tmp_path: Path) -> None:
    pixels = picture(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    # (top, left, right, bottom) past the right and bottom edges: rows 10:30, columns 20:40.
    face = crop_face(image, (10, 20, 90, 70), SIZE)
    expected = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR,
                                              box=(20, 10, 40, 30))
    np.testing.assert_array_equal(face, np.asarray(expected))
    assert face.dtype == np.uint8 and face.shape == (SIZE, SIZE, 3)
    whole = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    np.testing.assert_array_equal(crop_face(image, None, SIZE), np.asarray(whole))


def test_crop_face_gives_none_for_a_box_with_no_pixels(tmp_path: Path) -> None:
    picture(tmp_path / "p.png")
    image = read_image(tmp_path / "p.png")
    assert crop_face(image, (100, 100, 120, 120), SIZE) is None  # off the image
    assert crop_face(image, (5, 10, 10, 5), SIZE) is None  # empty as annotated


def test_the_crop_cache_makes_its_faces_with_crop_face(expw_root: Path, tmp_path: Path) -> None:
    data = load_dataset(DataConfig(root=expw_root, cache_dir=tmp_path / "c", split_seed=1), SIZE)
    entry = next((tmp_path / "c" / "crops").glob("*/meta.json")).parent
    faces, groups = np.load(entry / "faces.npy"), np.load(entry / "groups.npy")
    from trainer.data.expw import read_label_file

    records, _ = read_label_file(expw_root / "label.lst")
    for row in (0, 1, len(records) - 1):
        image = read_image(expw_root / "image" / "origin" / records[row].image_name)
        np.testing.assert_array_equal(faces[row], crop_face(image, records[row].box, SIZE))
        assert groups[row] == records[row].image_name
    assert data.report.problems == {}


# -------------------------------------------------------------------- problems, both passes


def broken(root: Path) -> Path:
    origin = root / "image" / "origin"
    (origin / "img_001.jpg").write_bytes(b"")  # 2 faces
    (origin / "img_004.jpg").write_bytes((origin / "img_004.jpg").read_bytes()[:300])  # 1
    with open(root / "label.lst", "a") as f:
        f.write("img_006.jpg 9 500 500 600 600 2.0 6\n")  # a box off its 64x64 image
    return root


def test_the_crop_cache_and_data_check_report_the_same_problems(
    expw_root: Path, tmp_path: Path
) -> None:
    root = broken(expw_root)
    config = DataConfig(root=root, cache_dir=tmp_path / "c")
    seen: list[tuple[int, int]] = []
    checked = inspect_dataset(config, on_progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (70, 70) and len(seen) == 70  # every image opened
    assert not (tmp_path / "c").exists()  # and nothing written
    loaded = load_dataset(config, SIZE).report
    expected = {
        "zero-byte": {"files": 1, "faces": 2, "examples": ["img_001.jpg"]},
        "truncated": {"files": 1, "faces": 1, "examples": ["img_004.jpg"]},
        "box outside its image": {"files": 1, "faces": 1, "examples": ["img_006.jpg"]},
    }
    assert checked.problems == expected
    assert loaded.problems == expected
    assert checked.faces == loaded.faces == 106 - 4
    assert checked.class_counts == loaded.class_counts
    assert loaded.skipped_summary() == (
        "skipped 4 of 106 faces: 2 in zero-byte images (img_001.jpg); 1 in truncated images "
        "(img_004.jpg); 1 with a box outside its image (img_006.jpg)"
    )


def test_strict_data_check_names_every_kind_in_one_error(expw_root: Path, tmp_path: Path) -> None:
    root = broken(expw_root)
    (root / "image" / "origin" / "img_010.jpg").unlink()
    with pytest.raises(DataError) as caught:
        inspect_dataset(DataConfig(root=root, cache_dir=tmp_path / "c", strict=True))
    message = str(caught.value)
    for part in ("1 whose image is missing (img_010.jpg)", "2 in zero-byte images",
                 "1 in truncated images", "1 with a box outside its image", "strict mode"):
        assert part in message
    assert "\n" not in message


def test_tally_counts_a_file_once_and_keeps_the_first_names() -> None:
    tally = ProblemTally()
    for i in range(8):
        tally.add("corrupt", f"f{i}.jpg", faces=2)
    tally.add("empty box", "a.jpg")
    tally.add("empty box", "a.jpg")
    found = tally.to_dict()
    assert found["corrupt"] == {"files": 8, "faces": 16,
                                "examples": ["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "f4.jpg"]}
    assert found["empty box"] == {"files": 1, "faces": 2, "examples": ["a.jpg"]}
    assert summary({}, 10) is None
    assert summary(found, 100).startswith("skipped 18 of 100 faces: 16 in corrupt images "
                                          "(f0.jpg, f1.jpg, ...)")


# ------------------------------------------------------------------------------- full disk


def test_a_crop_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(
    expw_root: Path, tmp_path: Path
) -> None:
    with hooks.disk_limit(50000), pytest.raises(DiskFull) as caught:
        load_dataset(DataConfig(root=expw_root, cache_dir=tmp_path / "c"), SIZE)
    assert isinstance(caught.value, trainer.TrainerError)
    assert not isinstance(caught.value, DataError)  # a runtime failure (exit 1), not bad input
    assert str(tmp_path / "c" / "crops") in str(caught.value)
    assert "needs" in str(caught.value) and "50,000 are free" in str(caught.value)
    assert not (tmp_path / "c").exists()


def test_no_space_left_mid_write_becomes_disk_full(tmp_path: Path) -> None:
    with pytest.raises(DiskFull, match="the feature cache: it needs 10 bytes"):
        with disk_full_as_error(tmp_path, 10, "the feature cache"):
            raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(PermissionError):  # other errors pass through
        with disk_full_as_error(tmp_path, 10, "x"):
            raise PermissionError(errno.EACCES, "denied")


def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path: Path) -> None:
    assert free_bytes(tmp_path / "not" / "yet") == free_bytes(tmp_path) > 0
    require_free_space(tmp_path / "not" / "yet", 1, "x")
    with hooks.disk_limit(7):
        assert free_bytes(tmp_path) == 7
        with pytest.raises(DiskFull):
            require_free_space(tmp_path, 8, "x")


def test_crops_bytes_covers_the_faces_file() -> None:
    assert crops.crops_bytes(100, SIZE) > 100 * SIZE * SIZE * 3


def test_a_feature_cache_the_disk_cannot_hold_is_refused_before_anything_is_written(
    tmp_path: Path
) -> None:
    from tests.trainer.arrays import array_dataset
    from trainer import TrainConfig, train
    from trainer.network.features import feature_path

    data = array_dataset(tmp_path / "cache")
    config = TrainConfig(weights="none", image_size=32, epochs=1, batch_size=16, head_width=8)
    with hooks.disk_limit(1000), \
            pytest.raises(DiskFull, match="the feature cache"):
        train(config, data)
    assert not feature_path(data, "train", config).parent.exists()
    assert list((tmp_path / "cache").rglob("*.npy")) == []  # no partial array anywhere
