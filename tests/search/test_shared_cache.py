"""Features once per cluster: workers that each work in their own folder (their own copy of the
spec and the synthetic data) and share one cache folder (FER_SEARCH_CACHE_DIR) and the study's
storage build the crop cache and each feature set once, under a lock held by the storage
(`search.storage.locks.cache_lock`); the others wait, then read.

Machines are stood for by processes whose cache-folder file locks lock nothing
(FER_SEARCH_TEST_CACHE_UNLOCKED, a hook of tests/infra/hooks.py), as over NFS between machines:
only the storage's lock can serialise them. Builds are counted by FER_SEARCH_TEST_BUILD_LOG (one
line per build).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from optuna.trial import TrialState

from search import settings
from search.spec.loader import load_spec
from search.storage.locks import cache_lock, holds_locks
from search.trial.data_provider import DataProvider
from tests.infra import hooks
from tests.infra.workers import spawn_worker
from tests.infra.workers import worker_env as env_for
from tests.search.studyhelp import stores_fixture, write_spec  # noqa: F401 (fixture)

# Three grid points, one head a group (FER_SEARCH_MAX_GROUP=1 below): three workers of one
# trial each all train.
SPACE = {"learning_rate": [1.0e-2], "batch_size": [16, 32, 64], "epochs": [2],
         "head_width": [16]}
MACHINES = 3


def _builds(log: Path) -> Counter:
    """(kind, entry) -> how many times it was built, from the build log's lines."""
    if not log.is_file():
        return Counter()
    return Counter(tuple(line.split()[:2]) for line in log.read_text().splitlines())


# ------------------------------------------------------------------------- the lock, in-process


def test_a_storage_that_holds_locks_gives_a_cache_lock(tmp_path):
    assert holds_locks(f"sqlite:///{tmp_path}/optuna.db")
    assert holds_locks("postgresql+psycopg2://fer:secret@db:5432/optuna")
    assert not holds_locks("sqlite:///:memory:") and not holds_locks("sqlite://")
    assert cache_lock("sqlite:///:memory:") is None  # the trainer keeps its file locks
    lock = cache_lock(f"sqlite:///{tmp_path}/optuna.db")
    with lock("features-train-abc"):
        pass
    assert (tmp_path / "optuna.db.cache" / "features-train-abc.lock").is_file()


def test_the_data_provider_hands_the_storage_lock_to_the_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, name="lock"))
    url = f"sqlite:///{tmp_path}/stores/optuna.db"
    log = tmp_path / "builds.log"
    with hooks.build_log(log):
        data = DataProvider(spec, storage_url=url).get(32)
    assert data.cache_lock is not None
    [(kind, key)] = _builds(log)
    assert kind == "crops"
    assert (tmp_path / "stores" / "optuna.db.cache" / f"crops-{key[:32]}.lock").is_file()
    assert not (tmp_path / ".cache" / "crops" / f"{key}.lock").exists(), "a file lock was taken"


def test_the_cache_folder_comes_from_the_flag_then_the_environment_then_the_spec(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_spec(tmp_path, name="where"))
    assert DataProvider(spec).get(32).cache_dir == Path(".cache")
    with settings.override(FER_SEARCH_CACHE_DIR=tmp_path / "shared"):
        assert DataProvider(spec).get(32).cache_dir == tmp_path / "shared"
        flag = DataProvider(spec, tmp_path / "flag").get(32)
    assert flag.cache_dir == tmp_path / "flag"
    assert (tmp_path / "shared" / "crops").is_dir()


# ------------------------------------------------------------------ three machines, one cache


def _three_machines(tmp_path: Path, storage_url: str, tracking_uri: str, name: str,
                    stores) -> tuple[Counter, list[Path]]:
    """Starts one one-trial worker per machine folder, each with its own spec copy and data,
    sharing the cache folder and the stores; returns the builds and the machine folders."""
    shared, log = tmp_path / "shared-cache", tmp_path / "builds.log"
    env = env_for(storage_url, tracking_uri, FER_SEARCH_CACHE_DIR=str(shared),
                  FER_SEARCH_TEST_BUILD_LOG=str(log), FER_SEARCH_TEST_CACHE_UNLOCKED="1",
                  FER_SEARCH_MAX_GROUP="1")
    machines = [tmp_path / f"machine-{i}" for i in range(MACHINES)]
    workers = []
    try:
        for folder in machines:
            spec = write_spec(folder, name=name, space=SPACE)
            workers.append(spawn_worker(folder, spec, env, "worker", "--n-trials", "1"))
        for worker in workers:
            assert worker.wait(600) == 0, worker.output()[-3000:]
    finally:
        for worker in workers:
            worker.kill()
    trials = stores.trials(storage_url, name)
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * MACHINES, \
        [w.output()[-2000:] for w in workers]
    assert len({t.params["batch_size"] for t in trials}) == MACHINES
    assert all(t.state == TrialState.COMPLETE for t in trials)
    for folder in machines:  # each worked in its own folder, on its own data, caching nothing
        assert (folder / "data").is_dir()
        assert not (folder / ".cache").exists()
    assert (shared / "features").is_dir()
    return _builds(log), machines


def _assert_built_once(builds: Counter) -> None:
    kinds = Counter(kind for kind, _ in builds)
    assert kinds["crops"] == 1, builds
    assert kinds["features"] >= 1, builds  # the train split's, and the val split's
    assert set(builds.values()) == {1}, f"a cache entry was built twice: {builds}"


@pytest.mark.slow
def test_three_machines_extract_the_features_once_sqlite(tmp_path, stores):
    stores_dir = tmp_path / "stores"
    storage_url = f"sqlite:///{stores_dir}/optuna.db"
    builds, _ = _three_machines(tmp_path, storage_url, f"sqlite:///{stores_dir}/mlflow.db",
                                "shared-sqlite", stores)
    _assert_built_once(builds)
    # The builds were serialised by the storage: its lock files lie beside the database.
    for kind, entry in builds:
        name = entry[:32] if kind == "crops" else entry
        assert (stores_dir / "optuna.db.cache" / f"{kind}-{name}.lock").is_file()
    shared = tmp_path / "shared-cache"
    assert not [*shared.glob("crops/*.lock"), *shared.glob("features/*.lock")], \
        "a file lock was taken in the shared folder"


@pytest.mark.slow
@pytest.mark.postgres
def test_three_machines_extract_the_features_once_postgres(pg_cluster, mlflow_server, tmp_path,
                                                           stores):
    builds, _ = _three_machines(tmp_path, pg_cluster.url(), mlflow_server.uri, "shared-pg",
                                stores)
    _assert_built_once(builds)
