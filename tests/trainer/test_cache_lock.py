"""trainer.files.cache_lock: a crop cache or a feature set is built under the lock handed in
(`cache_lock`), not the file lock, so builders on machines that share the cache folder build it
once. Two threads stand for two machines: `hooks.unlocked_cache_files` makes the file lock
lock nothing, as it may between machines over NFS.

The race is forced, not hoped for: the first builder waits inside its build until the second
has either asked for the entry's lock or started building too."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest

from tests.infra import hooks
from tests.trainer.arrays import array_dataset
from trainer.config import DataConfig, TrainConfig
from trainer.data import crops, loading
from trainer.data.synthetic import generate_synthetic_expw
from trainer.network import features

CONFIG = TrainConfig(image_size=32, weights="none")
WAIT_S = 60  # a safety net only: in a passing run nobody waits for it


class _Output:
    shape = (None, 4)


class _Frozen:
    output = _Output()

    def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype="float32").mean(axis=(1, 2))[:, :1].repeat(4, axis=1)


class _Network:
    """What `features_for` uses of a network: the frozen part's output shape and its batches."""

    frozen = _Frozen()


class Race:
    """Two builders of one entry. The first, once inside its build, waits for the second to
    arrive: to ask for the lock (`lock`, then it blocks there) or to start building too."""

    def __init__(self) -> None:
        self.second_arrived = threading.Event()
        self.builds: list[str] = []
        self.requested: list[str] = []
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def lock(self, name: str):
        """The injected `CacheLock`: one exclusive lock per name, seen by both threads."""
        with self._guard:
            self.requested.append(name)
            entry = self._locks.setdefault(name, threading.Lock())
        if threading.current_thread().name == "second":
            self.second_arrived.set()
        return _held(entry)

    def wrap(self, build):
        def watched(*args, **kwargs):
            self.builds.append(threading.current_thread().name)
            if threading.current_thread().name == "first":
                assert self.second_arrived.wait(WAIT_S), "the second builder never arrived"
            else:
                self.second_arrived.set()
            return build(*args, **kwargs)

        return watched

    def run(self, build_entry) -> list:
        """`build_entry()` in "first", then (once it builds) in "second"; both results."""
        results: dict[str, object] = {}
        errors: list[BaseException] = []

        def target() -> None:
            try:
                results[threading.current_thread().name] = build_entry()
            except BaseException as error:  # noqa: BLE001  (re-raised in the test's thread)
                errors.append(error)
                self.second_arrived.set()

        first = threading.Thread(target=target, name="first")
        first.start()
        while not self.builds and first.is_alive():
            first.join(0.01)
        second = threading.Thread(target=target, name="second")
        second.start()
        first.join(WAIT_S)
        second.join(WAIT_S)
        if errors:
            raise errors[0]
        return [results["first"], results["second"]]


@contextlib.contextmanager
def _held(lock: threading.Lock):
    with lock:
        yield


@pytest.fixture
def machines():
    """File locks in the cache folder that lock nothing, as between machines over NFS."""
    with hooks.unlocked_cache_files():
        yield


def test_machines_sharing_a_folder_extract_features_twice_with_file_locks_alone(
        tmp_path, machines, monkeypatch):
    race = Race()
    monkeypatch.setattr(features, "_extract_to", race.wrap(features._extract_to))
    features.forget_loaded()
    data = array_dataset(tmp_path / "shared")
    race.run(lambda: features.features_for(data, "train", CONFIG, _Network())[0])
    assert race.builds == ["first", "second"]  # what the storage's lock is there to prevent
    features.forget_loaded()


def test_features_are_extracted_once_under_the_injected_lock(tmp_path, machines, monkeypatch):
    race = Race()
    monkeypatch.setattr(features, "_extract_to", race.wrap(features._extract_to))
    features.forget_loaded()
    shared = tmp_path / "shared"
    data = dataclasses.replace(array_dataset(shared), cache_lock=race.lock)
    first, second = race.run(lambda: np.asarray(
        features.features_for(data, "train", CONFIG, _Network())[0]))
    path = features.feature_path(data, "train", CONFIG)
    assert race.builds == ["first"]
    assert race.requested == [f"features-{path.stem}"] * 2
    np.testing.assert_array_equal(first, second)
    assert np.asarray(np.load(path)).shape == (len(data.train.images), 4)
    assert not path.with_suffix(".lock").exists(), "a file lock was taken besides the lock given"
    features.forget_loaded()


def test_without_a_lock_given_the_file_lock_serialises_one_machine(tmp_path, monkeypatch):
    race = Race()
    monkeypatch.setattr(features, "_extract_to", race.wrap(features._extract_to))
    features.forget_loaded()
    data = array_dataset(tmp_path / "cache")
    arrived = threading.Event()
    real_lock = features.entry_lock

    def noted(cache_lock, name, lock_file):  # the second thread arrives at the file lock
        if threading.current_thread().name == "second":
            race.second_arrived.set()
            arrived.set()
        return real_lock(cache_lock, name, lock_file)

    monkeypatch.setattr(features, "entry_lock", noted)
    race.run(lambda: features.features_for(data, "train", CONFIG, _Network())[0])
    assert arrived.is_set() and race.builds == ["first"]
    assert features.feature_path(data, "train", CONFIG).with_suffix(".lock").exists()
    features.forget_loaded()


def test_the_crop_cache_is_built_once_under_the_injected_lock(tmp_path, machines, monkeypatch):
    root = generate_synthetic_expw(tmp_path / "data", 140, 0)
    race = Race()
    monkeypatch.setattr(crops, "_build_crops", race.wrap(crops._build_crops))
    config = DataConfig(root=root, cache_dir=tmp_path / "shared", workers=1)
    first, second = race.run(lambda: loading.load_dataset(config, 32, cache_lock=race.lock))
    assert race.builds == ["first"]
    assert len(race.requested) == 2 and race.requested[0].startswith("crops-")
    assert first.fingerprint == second.fingerprint
    np.testing.assert_array_equal(first.train.images, second.train.images)
    assert second.cache_lock == race.lock, "the dataset does not carry the lock to its features"
    assert not list((tmp_path / "shared" / "crops").glob("*.lock"))


def test_each_build_is_told_to_the_builds_logger(tmp_path, monkeypatch):
    log = tmp_path / "builds.log"
    features.forget_loaded()
    data = array_dataset(tmp_path / "cache")
    with hooks.build_log(log):
        features.features_for(data, "train", CONFIG, _Network())
        features.forget_loaded()
        features.features_for(data, "train", CONFIG, _Network())  # read from disk: no build
    stem = features.feature_path(data, "train", CONFIG).stem
    assert [line.split()[:2] for line in log.read_text().splitlines()] == [["features", stem]]
    features.forget_loaded()


def test_a_folder_refresh_tolerates_a_missing_folder(tmp_path: Path):
    from trainer.files.cache_lock import refresh

    refresh(tmp_path / "not-there")  # nothing to list, nothing raised

