"""load_dataset end to end: validation, the crop cache (reuse, keys, races, crashes), the split."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import numpy as np
import pytest

import trainer.data.crops as crops
from tests.trainer.conftest import CLASS_COLOURS
from trainer.config import DataConfig
from trainer.data.loading import class_weights, inspect_dataset, load_dataset
from trainer.errors import ConfigError, DataError
from trainer.files.atomic import atomic_dir, atomic_save_npy, atomic_write_bytes
from trainer.files.lock import file_lock

SIZE = 32


def config(root: Path, tmp_path: Path, **kwargs: object) -> DataConfig:
    kwargs.setdefault("cache_dir", tmp_path / "cache")
    kwargs.setdefault("workers", 2)
    return DataConfig(root=root, **kwargs)


def crop_entries(cache_dir: Path) -> list[Path]:
    """Finished cache entries (temp folders start with a dot)."""
    folder = cache_dir / "crops"
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def temp_entries(cache_dir: Path) -> list[Path]:
    return sorted((cache_dir / "crops").glob(".*.tmp-*"))


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    calls: list[Path] = []

    def no_decode(path: Path):
        calls.append(path)
        raise RuntimeError(f"decoded {path} although the cache should have been reused")

    monkeypatch.setattr(crops, "_decode_image", no_decode)
    return calls


def digest(*arrays: np.ndarray) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# --- a good dataset ----------------------------------------------------------------------------


def test_loads_three_grouped_splits_of_uint8_faces(expw_root: Path, tmp_path: Path) -> None:
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    total = sum(len(data.split(name)) for name in ("train", "val", "test"))
    assert total == 105
    assert data.image_size == SIZE and data.cache_dir == tmp_path / "cache"
    for split in (data.train, data.val, data.test):
        assert split.images.dtype == np.uint8
        assert split.images.shape == (len(split), SIZE, SIZE, 3)
        assert split.labels.shape == split.groups.shape == (len(split),)
    groups = [set(data.split(n).groups) for n in ("train", "val", "test")]
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert len(data.train) == pytest.approx(0.7 * 105, abs=6)


def test_every_crop_shows_its_labels_colour(expw_root: Path, tmp_path: Path) -> None:
    # Each face box is painted in its class's colour: right box order and right label field.
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    for split in (data.train, data.val, data.test):
        # Whole crops but a 2-pixel rim, where resampling may blend in the pixel beyond the box.
        means = split.images[:, 2:-2, 2:-2].reshape(len(split), -1, 3).mean(axis=1)
        expected = np.array(CLASS_COLOURS)[split.labels]
        assert np.abs(means - expected).max() < 12


def test_report(make_expw, tmp_path: Path) -> None:
    root = make_expw()
    label = root / "label.lst"
    lines = label.read_text().splitlines()
    # A duplicate, a conflicting label, and a face far outside its 64x64 image.
    extra = [lines[0], lines[0][:-1] + "4", "img_000.jpg 5 100 100 150 150 2.0 3"]
    label.write_text("\n".join(lines + extra) + "\n")
    report = load_dataset(config(root, tmp_path), SIZE).report
    assert report.faces == 105
    assert report.duplicate_lines == 1
    assert report.skipped_lines == 1
    assert report.empty_boxes == 1
    assert report.class_counts == {name: 15 for name in report.class_counts}
    assert sum(report.split_sizes.values()) == 105
    assert sum(c["fear"] for c in report.split_class_counts.values()) == 15
    assert report.label_file == str(label)
    assert report.image_dir == str(root / "image" / "origin")
    assert report.to_dict()["faces"] == 105


def test_min_confidence_filters_faces(expw_root: Path, tmp_path: Path) -> None:
    # Confidence of image i's faces is 1 + i: >= 8 drops images 0..6 (10 faces).
    report = load_dataset(config(expw_root, tmp_path, min_confidence=8.0), SIZE).report
    assert report.low_confidence == 10
    assert report.faces == 95


def test_fingerprint_follows_split_settings(expw_root: Path, tmp_path: Path) -> None:
    a = load_dataset(config(expw_root, tmp_path), SIZE)
    b = load_dataset(config(expw_root, tmp_path), SIZE)
    c = load_dataset(config(expw_root, tmp_path, split_seed=1), SIZE)
    d = load_dataset(config(expw_root, tmp_path, split=(0.8, 0.1, 0.1)), SIZE)
    assert a.fingerprint == b.fingerprint
    assert len({a.fingerprint, c.fingerprint, d.fingerprint}) == 3
    np.testing.assert_array_equal(a.train.images, b.train.images)
    assert len(crop_entries(tmp_path / "cache")) == 1  # one crop entry serves every split


def test_zero_val_fraction(expw_root: Path, tmp_path: Path) -> None:
    data = load_dataset(config(expw_root, tmp_path, split=(0.8, 0.0, 0.2)), SIZE)
    assert len(data.val) == 0 and data.val.images.shape == (0, SIZE, SIZE, 3)


def test_all_train_is_a_view_of_the_cache(expw_root: Path, tmp_path: Path) -> None:
    data = load_dataset(config(expw_root, tmp_path, split=(1.0, 0.0, 0.0)), SIZE)
    assert len(data.train) == 105
    assert isinstance(data.train.images, np.memmap)  # contiguous rows: no copy


def test_class_weights_balanced() -> None:
    weights = class_weights(np.array([0, 0, 0, 1, 2, 2]))
    assert weights == pytest.approx({0: 6 / 9, 1: 2.0, 2: 1.0})


def test_class_weights_equal_scikit_learn_s_to_the_bit() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.random.default_rng(0).choice(7, size=4057, p=[.05, .01, .02, .3, .1, .12, .4])
    classes = np.unique(labels)
    theirs = compute_class_weight("balanced", classes=classes, y=labels)
    assert class_weights(labels) == {int(c): float(w) for c, w in zip(classes, theirs, strict=True)}


# --- the crop cache ----------------------------------------------------------------------------


def test_built_once_then_reused_without_decoding(
    expw_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = load_dataset(config(expw_root, tmp_path), SIZE)
    entry = crop_entries(tmp_path / "cache")
    assert len(entry) == 1
    assert sorted(p.name for p in entry[0].iterdir()) == [
        "faces.npy", "groups.npy", "labels.npy", "meta.json"
    ]
    calls = forbid_decoding(monkeypatch)
    second = load_dataset(config(expw_root, tmp_path), SIZE)
    assert calls == []
    assert digest(first.test.images, first.test.labels) == digest(
        second.test.images, second.test.labels
    )


@pytest.mark.parametrize(
    "change", ["image_size", "margin", "min_confidence", "image_mtime", "label_file"]
)
def test_key_changes_with_inputs(
    expw_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    load_dataset(config(expw_root, tmp_path), SIZE)
    size, kwargs = SIZE, {}
    if change == "image_size":
        size = SIZE + 8
    elif change == "margin":
        kwargs = {"margin": 0.1}
    elif change == "min_confidence":
        kwargs = {"min_confidence": 0.5}
    elif change == "image_mtime":
        image = expw_root / "image" / "origin" / "img_005.jpg"
        st = image.stat()
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    else:
        label = expw_root / "label.lst"
        label.write_text(label.read_text() + "\n")  # same faces, different bytes
    data = load_dataset(config(expw_root, tmp_path, **kwargs), size)
    assert len(crop_entries(tmp_path / "cache")) == 2
    assert data.image_size == size and data.train.images.shape[1] == size
    calls = forbid_decoding(monkeypatch)
    load_dataset(config(expw_root, tmp_path, **kwargs), size)
    assert calls == []


def _race_builder(
    root: Path, cache_dir: Path, log: Path, barrier, results
) -> None:
    """Child process: count our builds, start with the other child, report what we loaded."""
    real_build = crops._build_crops

    def counting_build(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.5)  # hold the lock long enough for the other process to arrive
        return real_build(*args, **kwargs)

    crops._build_crops = counting_build
    barrier.wait()
    data = load_dataset(DataConfig(root=root, cache_dir=cache_dir, workers=1), SIZE)
    parts = [data.split(n) for n in ("train", "val", "test")]
    results.put(digest(*[p.images for p in parts], *[p.labels for p in parts]))


def test_concurrent_builders_build_once(expw_root: Path, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")  # cheap: the children need no fresh interpreter
    barrier, results = ctx.Barrier(2), ctx.Queue()
    log = tmp_path / "builds.log"
    args = (expw_root, tmp_path / "cache", log, barrier, results)
    procs = [ctx.Process(target=_race_builder, args=args) for _ in range(2)]
    for p in procs:
        p.start()
    digests = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(log.read_text().splitlines()) == 1
    assert digests[0] == digests[1]
    assert len(crop_entries(tmp_path / "cache")) == 1
    assert temp_entries(tmp_path / "cache") == []


def test_failed_build_leaves_no_cache(
    expw_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_decode = crops._decode_image
    seen: list[Path] = []

    def decode_then_fail(path: Path):
        seen.append(path)
        if len(seen) > 10:
            raise RuntimeError("simulated crash in the middle of the build")
        return real_decode(path)

    monkeypatch.setattr(crops, "_decode_image", decode_then_fail)
    with pytest.raises(RuntimeError, match="simulated crash"):
        load_dataset(config(expw_root, tmp_path), SIZE)
    assert crop_entries(tmp_path / "cache") == []
    assert temp_entries(tmp_path / "cache") == []


def _die_mid_build(root: Path, cache_dir: Path) -> None:
    """Child process: the first decode kills the process, as a power cut or OOM kill would."""
    crops._decode_image = lambda path: os._exit(3)
    load_dataset(DataConfig(root=root, cache_dir=cache_dir, workers=1), SIZE)


def test_killed_build_leaves_no_cache_and_is_cleaned_up(expw_root: Path, tmp_path: Path) -> None:
    cache_dir = tmp_path / "cache"
    child = multiprocessing.get_context("fork").Process(
        target=_die_mid_build, args=(expw_root, cache_dir)
    )
    child.start()
    child.join(timeout=120)
    assert child.exitcode == 3
    assert crop_entries(cache_dir) == []
    assert len(temp_entries(cache_dir)) == 1  # the dead builder's half-written temp folder
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    assert len(data.train) + len(data.val) + len(data.test) == 105
    assert len(crop_entries(cache_dir)) == 1
    assert temp_entries(cache_dir) == []


def test_damaged_entry_is_rebuilt(expw_root: Path, tmp_path: Path) -> None:
    load_dataset(config(expw_root, tmp_path), SIZE)
    (entry,) = crop_entries(tmp_path / "cache")
    (entry / "labels.npy").write_bytes(b"not a npy file")
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    assert sum(len(data.split(n)) for n in ("train", "val", "test")) == 105


# --- bad inputs: one clear error, nothing written ----------------------------------------------


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ExpW root .*nowhere does not exist"):
        load_dataset(config(tmp_path / "nowhere", tmp_path), SIZE)
    assert not (tmp_path / "cache").exists()


def test_no_label_file(expw_root: Path, tmp_path: Path) -> None:
    (expw_root / "label.lst").unlink()
    with pytest.raises(DataError, match=r"no ExpW label file found: expected a file at .*label"):
        load_dataset(config(expw_root, tmp_path), SIZE)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ("img_001.jpg 0 4 4 28 28 2.0", r"label\.lst:106: expected 8 whitespace-separated"),
        ("img_001.jpg 0 4 4 28 28 2.0 7", r"label\.lst:106: expected label \(8th field\) in 0"),
        ("img_001.jpg 0 4 x4 28 28 2.0 1", r"label\.lst:106: expected left to be a finite"),
    ],
)
def test_malformed_label_file_writes_nothing(
    expw_root: Path, tmp_path: Path, bad_line: str, message: str
) -> None:
    with open(expw_root / "label.lst", "a") as f:
        f.write(bad_line + "\n")
    with pytest.raises(DataError, match=message):
        load_dataset(config(expw_root, tmp_path), SIZE)
    assert not (tmp_path / "cache").exists()


def test_missing_image_skipped_and_counted(expw_root: Path, tmp_path: Path) -> None:
    (expw_root / "image" / "origin" / "img_003.jpg").unlink()  # 2 faces
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    assert data.report.skipped_files == ("img_003.jpg",)
    assert data.report.skipped_faces == 2
    assert data.report.faces == 103
    assert "img_003.jpg" not in set(data.train.groups) | set(data.val.groups) | set(
        data.test.groups
    )
    (entry,) = crop_entries(tmp_path / "cache")
    assert np.load(entry / "faces.npy", mmap_mode="r").shape == (103, SIZE, SIZE, 3)


def test_missing_image_strict_is_an_error_before_writing(expw_root: Path, tmp_path: Path) -> None:
    (expw_root / "image" / "origin" / "img_003.jpg").unlink()
    with pytest.raises(DataError, match=r"label\.lst:5: expected image .*img_003\.jpg to exist"):
        load_dataset(config(expw_root, tmp_path, strict=True), SIZE)
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_image_skipped_or_strict_error(
    expw_root: Path, tmp_path: Path, damage: str
) -> None:
    image = expw_root / "image" / "origin" / "img_004.jpg"  # 1 face
    content = image.read_bytes()
    image.write_bytes(
        {"garbage": b"this is not a jpeg", "truncated": content[: len(content) // 3],
         "empty": b""}[damage]
    )
    data = load_dataset(config(expw_root, tmp_path), SIZE)
    assert data.report.skipped_files == ("img_004.jpg",)
    assert data.report.skipped_faces == 1
    with pytest.raises(DataError, match=r"img_004\.jpg: expected a readable image, found it"):
        load_dataset(config(expw_root, tmp_path, strict=True), SIZE)  # the lenient cache exists
    with pytest.raises(DataError, match=r"img_004\.jpg: expected a readable image, found it"):
        load_dataset(config(expw_root, tmp_path, strict=True, cache_dir=tmp_path / "c2"), SIZE)
    assert crop_entries(tmp_path / "c2") == []


def test_class_with_no_faces_is_named(make_expw, tmp_path: Path) -> None:
    root = make_expw(skip_labels=(2,))
    with pytest.raises(DataError, match=r"expected faces of all 7 classes, found none of 'fear'"):
        load_dataset(config(root, tmp_path), SIZE)
    assert not (tmp_path / "cache").exists()


def test_class_lost_to_unreadable_images_is_named(make_expw, tmp_path: Path) -> None:
    root = make_expw(images=7)  # one image per label 0..6, plus second faces on odd images
    # Image 5 holds the only 'surprise' face (label 5 = 5 % 7; second faces are (i + 3) % 7).
    (root / "image" / "origin" / "img_005.jpg").write_bytes(b"broken")
    with pytest.raises(DataError, match=r"after skipping unreadable images.*'surprise'"):
        load_dataset(config(root, tmp_path, split=(1.0, 0.0, 0.0)), SIZE)


def test_too_few_faces_for_a_split(make_expw, tmp_path: Path) -> None:
    root = make_expw(images=7)
    with pytest.raises(DataError, match=r"split 'val': expected some faces"):
        load_dataset(config(root, tmp_path, split=(0.5, 0.01, 0.49)), SIZE)


@pytest.mark.parametrize("size", [31, 0, 32.0, True])
def test_bad_image_size(expw_root: Path, tmp_path: Path, size: object) -> None:
    with pytest.raises(ConfigError, match=r"^image_size: expected an integer >= 32") as info:
        load_dataset(config(expw_root, tmp_path), size)
    assert info.value.field == "image_size"
    assert not (tmp_path / "cache").exists()


def test_other_layouts_load(make_expw, tmp_path: Path) -> None:
    root = make_expw(layout="Images", label_place="label/label.lst")
    data = load_dataset(config(root, tmp_path), SIZE)
    assert data.report.image_dir == str(root / "Images")


def test_inspect_dataset_reads_without_writing(expw_root: Path, tmp_path: Path) -> None:
    (expw_root / "image" / "origin" / "img_003.jpg").unlink()
    report = inspect_dataset(config(expw_root, tmp_path))
    assert report.faces == 103
    assert report.skipped_files == ("img_003.jpg",) and report.skipped_faces == 2
    assert sum(report.split_sizes.values()) == 103
    assert not (tmp_path / "cache").exists()
    loaded = load_dataset(config(expw_root, tmp_path), SIZE).report
    assert loaded.split_sizes == report.split_sizes


# --- the atomic helpers ------------------------------------------------------------------------


def test_atomic_writes(tmp_path: Path) -> None:
    atomic_write_bytes(tmp_path / "a.bin", b"one")
    atomic_write_bytes(tmp_path / "a.bin", b"two")
    assert (tmp_path / "a.bin").read_bytes() == b"two"
    atomic_save_npy(tmp_path / "x.npy", np.arange(5))
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), np.arange(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "x.npy"]


def test_atomic_dir_publishes_whole_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        with atomic_dir(tmp_path / "entry") as tmp:
            (tmp / "part").write_text("half")
            raise KeyError("boom")
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "entry") as tmp:
        (tmp / "part").write_text("whole")
    assert (tmp_path / "entry" / "part").read_text() == "whole"
    with atomic_dir(tmp_path / "entry") as tmp:  # a finished entry is kept, the new one dropped
        (tmp / "part").write_text("again")
    assert (tmp_path / "entry" / "part").read_text() == "whole"
    assert [p.name for p in tmp_path.iterdir()] == ["entry"]


def _hold_lock(path: Path, held, release) -> None:
    with file_lock(path):
        held.set()
        release.wait(30)


def test_file_lock_excludes_other_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    held, release = ctx.Event(), ctx.Event()
    child = ctx.Process(target=_hold_lock, args=(tmp_path / "x.lock", held, release))
    child.start()
    assert held.wait(30)
    import fcntl

    with open(tmp_path / "x.lock") as f, pytest.raises(BlockingIOError):
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    release.set()
    child.join(30)
    with file_lock(tmp_path / "x.lock"):  # free again once the holder is gone
        pass
