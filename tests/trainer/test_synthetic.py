"""Tests of the synthetic ExpW generator: format, determinism, quirks, idempotence, atomicity."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import trainer.data.synthetic as synthetic
from trainer.data.synthetic import (
    EXPW_CLASS_SHARES,
    IMAGE_SUBDIR,
    LABEL_FILE,
    MANIFEST_NAME,
    SKIN_TONES,
    class_counts,
    generate_synthetic_expw,
)
from trainer.errors import ConfigError, DataError
from trainer.labels import CLASS_NAMES, NUM_CLASSES

FACES = 150  # enough for several faces per photo and a few edge-crossing boxes; about a second


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_synthetic_expw(tmp_path_factory.mktemp("synthetic") / "expw", FACES, seed=3)


def _lines(root: Path) -> list[list[str]]:
    return [line.split(" ") for line in (root / LABEL_FILE).read_text().splitlines()]


def _image_sizes(root: Path) -> dict[str, tuple[int, int]]:
    sizes = {}
    for path in (root / IMAGE_SUBDIR).iterdir():
        with Image.open(path) as image:
            sizes[path.name] = image.size
    return sizes


def _tree_bytes(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def _skin_distance(rgb: np.ndarray) -> float:
    """Distance from a colour to the nearest point of the skin-tone ramp."""
    tones = np.asarray(SKIN_TONES, dtype=float)
    best = np.inf
    for a, b in zip(tones[:-1], tones[1:], strict=True):
        t = np.clip(np.dot(rgb - a, b - a) / np.dot(b - a, b - a), 0, 1)
        best = min(best, float(np.linalg.norm(rgb - (a + t * (b - a)))))
    return best


def _centre_colour(pixels: np.ndarray, top: int, left: int, side: int) -> np.ndarray:
    lo, hi = int(0.35 * side), int(0.65 * side)
    patch = pixels[top + lo:top + hi, left + lo:left + hi].reshape(-1, 3)
    return np.median(patch, axis=0)


# ------------------------------------------------------------------------------- layout, format


def test_layout_and_exact_face_count(dataset: Path) -> None:
    assert (dataset / LABEL_FILE).is_file()
    assert (dataset / IMAGE_SUBDIR).is_dir()
    assert (dataset / MANIFEST_NAME).is_file()
    lines = _lines(dataset)
    assert len(lines) == FACES
    named = {fields[0] for fields in lines}
    on_disk = {p.name for p in (dataset / IMAGE_SUBDIR).iterdir()}
    assert named == on_disk  # every photo is labelled and every label has its photo


def test_lines_follow_the_expw_format(dataset: Path) -> None:
    sizes = _image_sizes(dataset)
    for fields in _lines(dataset):
        assert len(fields) == 8, fields
        name, face_id, top, left, right, bottom, confidence, label = fields
        assert re.fullmatch(r"[a-z]+_[a-z]+_\d+\.jpg", name)
        assert int(face_id) >= 0
        top, left, right, bottom = int(top), int(left), int(right), int(bottom)
        assert bottom > top and right > left  # order: top left right bottom
        assert 0.8 <= (bottom - top) / (right - left) <= 1.25  # detector boxes are about square
        assert 0.2 <= float(confidence) <= 140
        assert re.fullmatch(r"\d+\.\d{4}", confidence)
        assert 0 <= int(label) < NUM_CLASSES
        width, height = sizes[name]
        # 160-320 px, up to three 96 px faces with gaps of a third of a face between them.
        assert 160 <= width <= 3 * 96 + 4 * 33 and height > 0


def test_several_faces_per_photo_with_ids_from_zero(dataset: Path) -> None:
    ids: dict[str, list[int]] = {}
    for fields in _lines(dataset):
        ids.setdefault(fields[0], []).append(int(fields[1]))
    assert all(found == list(range(len(found))) for found in ids.values())
    per_photo = Counter(len(found) for found in ids.values())
    assert per_photo[1] > 0 and per_photo[2] > 0 and per_photo[3] > 0
    assert max(per_photo) <= 3


def test_boxes_frame_faces_and_some_cross_the_edge(dataset: Path) -> None:
    sizes = _image_sizes(dataset)
    crossing = 0
    corners_like_skin = 0
    for fields in _lines(dataset):
        name = fields[0]
        top, left, right, bottom = (int(v) for v in fields[2:6])
        width, height = sizes[name]
        if top < 0 or left < 0 or right > width or bottom > height:
            crossing += 1
            continue
        pixels = np.asarray(Image.open(dataset / IMAGE_SUBDIR / name).convert("RGB"), dtype=float)
        # The middle of the box is skin (the face), and the box holds features, not flat colour.
        assert _skin_distance(_centre_colour(pixels, top, left, bottom - top)) < 30, fields
        assert pixels[top:bottom, left:right].std() > 20, fields
        # Control: the same check on a corner of the photo (background) mostly fails.
        corners_like_skin += _skin_distance(_centre_colour(pixels, 0, 0, 24)) < 30
    assert 1 <= crossing <= 0.2 * FACES
    assert corners_like_skin < 0.5 * (FACES - crossing)


def test_reader_accepts_the_generated_set(dataset: Path) -> None:
    from trainer.data.expw import clip_box, locate_expw, read_label_file

    label_file, image_dir = locate_expw(dataset)
    assert label_file == dataset / LABEL_FILE and image_dir == dataset / IMAGE_SUBDIR
    records, stats = read_label_file(label_file, strict=True)
    assert len(records) == stats.faces == FACES
    assert stats.duplicate_lines == stats.conflicting_lines == stats.blank_lines == 0
    sizes = _image_sizes(dataset)
    for record in records:
        assert clip_box(record, *sizes[record.image_name]) is not None


# ------------------------------------------------------------------------------------ classes


def test_balanced_set_has_every_class_in_equal_shares(dataset: Path) -> None:
    counts = Counter(int(fields[7]) for fields in _lines(dataset))
    assert [counts[i] for i in range(NUM_CLASSES)] == list(class_counts(FACES))
    assert max(counts.values()) - min(counts.values()) <= 1


def test_imbalanced_set_follows_class_counts(tmp_path: Path) -> None:
    out = generate_synthetic_expw(tmp_path / "expw", 60, seed=1, imbalance=True)
    counts = Counter(int(fields[7]) for fields in _lines(out))
    assert tuple(counts[i] for i in range(NUM_CLASSES)) == class_counts(60, imbalance=True)
    assert all(counts[i] >= 2 for i in range(NUM_CLASSES))


@pytest.mark.parametrize("faces", [7, 8, 13, 20, 40, 100, 333, 2000, 91793])
@pytest.mark.parametrize("imbalance", [False, True])
def test_class_counts_sum_and_keep_every_class(faces: int, imbalance: bool) -> None:
    counts = class_counts(faces, imbalance=imbalance)
    assert len(counts) == NUM_CLASSES and sum(counts) == faces
    assert min(counts) >= 1
    if faces >= 100:
        assert min(counts) >= 5  # "a few" faces of every class, even fear in an imbalanced set


def test_imbalanced_shares_are_expw_like() -> None:
    counts = dict(zip(CLASS_NAMES, class_counts(5000, imbalance=True), strict=True))
    assert 0.35 <= counts["neutral"] / 5000 <= 0.41
    assert 0.30 <= counts["happy"] / 5000 <= 0.36
    assert counts["neutral"] > counts["happy"] > counts["sad"] > counts["surprise"]
    assert 0.005 <= counts["fear"] / 5000 <= 0.02 and counts["fear"] == min(counts.values())
    shares = np.array(class_counts(91793, imbalance=True)) / 91793
    np.testing.assert_allclose(shares, EXPW_CLASS_SHARES, atol=1e-4)


# ------------------------------------------------------------------------------- determinism


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    a = generate_synthetic_expw(tmp_path / "a", 24, seed=7)
    b = generate_synthetic_expw(tmp_path / "b", 24, seed=7)
    c = generate_synthetic_expw(tmp_path / "c", 24, seed=8)
    assert _tree_bytes(a) == _tree_bytes(b)
    assert (a / LABEL_FILE).read_bytes() != (c / LABEL_FILE).read_bytes()
    first_a = sorted((a / IMAGE_SUBDIR).iterdir())[0]
    first_c = sorted((c / IMAGE_SUBDIR).iterdir())[0]
    assert first_a.read_bytes() != first_c.read_bytes()


def test_manifest_records_the_arguments(dataset: Path) -> None:
    manifest = json.loads((dataset / MANIFEST_NAME).read_text())
    assert manifest["args"] == {"faces": FACES, "seed": 3, "imbalance": False, "min_face": 48,
                                "max_face": 96, "jitter": 1.0}
    assert manifest["generator_version"] == synthetic.GENERATOR_VERSION


# ------------------------------------------------------------------- reuse, refusal, atomicity


def test_rerun_with_same_arguments_reuses_the_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = generate_synthetic_expw(tmp_path / "expw", 10, seed=2)
    label = out / LABEL_FILE
    before = label.stat().st_mtime_ns
    os.utime(label, ns=(before - 10**9, before - 10**9))  # so a rewrite would show

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("regenerated an existing set")

    monkeypatch.setattr(synthetic, "_write_dataset", fail)
    assert generate_synthetic_expw(str(out), 10, seed=2) == out
    assert label.stat().st_mtime_ns == before - 10**9


def test_refuses_a_set_made_with_other_arguments(tmp_path: Path) -> None:
    out = generate_synthetic_expw(tmp_path / "expw", 10, seed=2)
    before = _tree_bytes(out)
    with pytest.raises(DataError, match=r"different arguments.*seed=2, wanted 3"):
        generate_synthetic_expw(out, 10, seed=3)
    with pytest.raises(DataError, match="imbalance"):
        generate_synthetic_expw(out, 10, seed=2, imbalance=True)
    assert _tree_bytes(out) == before


def test_refuses_a_folder_that_is_not_a_synthetic_set(tmp_path: Path) -> None:
    out = tmp_path / "real_expw"
    out.mkdir()
    (out / LABEL_FILE).write_text("angry_actor_104.jpg 0 28 113 226 141 22.9362 0\n")
    with pytest.raises(DataError, match="not a synthetic ExpW set"):
        generate_synthetic_expw(out, 10)
    assert (out / LABEL_FILE).read_text().startswith("angry_actor_104.jpg")
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        generate_synthetic_expw(a_file, 10)


def test_fills_an_empty_folder(tmp_path: Path) -> None:
    out = tmp_path / "empty"
    out.mkdir()
    generate_synthetic_expw(out, 8)
    assert len(_lines(out)) == 8


def test_failure_midway_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_render = synthetic._render_image
    calls = []

    def render_then_fail(*args: object, **kwargs: object) -> Image.Image:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("disk on fire")
        return real_render(*args, **kwargs)

    monkeypatch.setattr(synthetic, "_render_image", render_then_fail)
    with pytest.raises(RuntimeError, match="disk on fire"):
        generate_synthetic_expw(tmp_path / "expw", 20)
    assert not (tmp_path / "expw").exists()
    # Only the (empty, reusable) lock file may remain; no half-written temp folder.
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []

    monkeypatch.setattr(synthetic, "_render_image", real_render)
    assert len(_lines(generate_synthetic_expw(tmp_path / "expw", 20))) == 20


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"faces": 6}, "faces"),
        ({"faces": True}, "faces"),
        ({"faces": 10, "seed": -1}, "seed"),
        ({"faces": 10, "min_face": 8}, "min_face"),
        ({"faces": 10, "min_face": 64, "max_face": 48}, "max_face"),
        ({"faces": 10, "jitter": -0.5}, "jitter"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        generate_synthetic_expw(tmp_path / "expw", **kwargs)
    assert err.value.field == field
    assert not (tmp_path / "expw").exists()


def test_face_size_range_is_respected(tmp_path: Path) -> None:
    out = generate_synthetic_expw(tmp_path / "expw", 20, min_face=30, max_face=40)
    sides = {int(f[5]) - int(f[2]) for f in _lines(out)}
    assert min(sides) >= 30 and max(sides) <= 40


def test_copies_generated_apart_share_one_crop_cache_key(tmp_path: Path):
    """Workers on separate machines each generate their own copy: equal bytes and equal mtimes,
    so one shared cache folder serves them all (the crop key counts sizes and mtimes)."""
    from trainer.config import DataConfig
    from trainer.data.loading import load_dataset

    first = generate_synthetic_expw(tmp_path / "machine-a" / "data", 140, seed=0)
    second = generate_synthetic_expw(tmp_path / "machine-b" / "data", 140, seed=0)
    os.utime(second, ns=(1, 1))  # a folder's own mtime is not part of the key
    shared = tmp_path / "shared-cache"
    a = load_dataset(DataConfig(root=first, cache_dir=shared, workers=1), 32)
    b = load_dataset(DataConfig(root=second, cache_dir=shared, workers=1), 32)
    assert a.fingerprint == b.fingerprint
    assert len(list((shared / "crops").iterdir())) == 2  # one entry and its lock file
