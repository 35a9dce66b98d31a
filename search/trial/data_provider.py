"""The study's dataset, loaded once per process and image size (crops and features are cached on
disk by the trainer; this keeps the arrays in memory between trials), and logged on the study
run.

The cache folder is ``--cache-dir``, else FER_SEARCH_CACHE_DIR, else the spec's
``data.cache_dir``. Workers on several machines may share one (a ReadWriteMany volume, NFS)
while each works in its own folder: given the study's storage URL, the trainer builds each crop
cache and feature set under a lock held by that storage (`search.storage.locks.cache_lock`), so
one worker builds it and the others wait, then read it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import trainer
from search import settings
from search.spec.data_section import SyntheticData
from search.spec.loader import StudySpec
from search.spec.params import Categorical
from search.storage.locks import cache_lock


def _to_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr, flush=True)


class DataProvider:
    """Hands each trial the dataset at its image size, generating synthetic data on first use.

    Faces the reader had to skip (unreadable images, boxes off their image) are told once, in one
    line, through ``warn`` (default: ``warning: ...`` on stderr).

    Args:
        cache_dir: the crop and feature cache (None: FER_SEARCH_CACHE_DIR, else the spec's).
        storage_url: the study's storage: its lock serialises the caches' builds across
            machines. None: file locks in the cache folder (one machine).
    """

    def __init__(self, spec: StudySpec, cache_dir: Path | None = None,
                 warn: Callable[[str], None] = _to_stderr, *,
                 storage_url: str | None = None) -> None:
        self._spec = spec
        self._cache_dir = cache_dir if cache_dir is not None else _env_cache_dir()
        self._cache_lock = cache_lock(storage_url) if storage_url else None
        self._warn = warn
        self._warned: set[str] = set()
        self._loaded: dict[int, trainer.Dataset] = {}

    def get(self, image_size: int) -> trainer.Dataset:
        if image_size not in self._loaded:
            self._ensure_synthetic()
            config = self._spec.data_config(cache_dir=self._cache_dir)
            self._loaded[image_size] = dataset = trainer.load_dataset(
                config, image_size, cache_lock=self._cache_lock)
            line = dataset.report.skipped_summary() if dataset.report is not None else None
            if line and line not in self._warned:  # once, not once per image size
                self._warned.add(line)
                self._warn(f"{line} (fer-search data check {config.root} lists them)")
        return self._loaded[image_size]

    @property
    def cache_dir(self) -> Path:
        """The cache folder in use (crops, features, model costs)."""
        return self._spec.data_config(cache_dir=self._cache_dir).cache_dir

    @property
    def cache_lock(self):
        """The storage's lock for a cache folder machines share (None: file locks)."""
        return self._cache_lock

    def first(self) -> trainer.Dataset:
        """The dataset at the first image size the study tries: loading it validates the data
        (bad data stops here, before a study or run exists)."""
        return self.get(first_image_size(self._spec))

    def _ensure_synthetic(self) -> None:
        data = self._spec.data
        if isinstance(data, SyntheticData):
            trainer.generate_synthetic_expw(
                data.root, data.faces, data.seed, imbalance=data.imbalance
            )


def _env_cache_dir() -> Path | None:
    value = settings.cache_dir()
    return Path(value).expanduser() if value else None


def first_image_size(spec: StudySpec) -> int:
    """The image size of the study's first trial (each searched parameter at its first value)."""
    first = {p.name: p.choices[0] if isinstance(p, Categorical) else p.low for p in spec.space}
    return spec.train_config(first).image_size


def log_data(tracker, run_id: str, spec: StudySpec, data) -> None:
    """The dataset's fingerprint and split sizes, on the study run."""
    report = data.report
    params = {"data_fingerprint": data.fingerprint, "data_root": str(spec.data_config().root)}
    if report is not None:
        params.update({f"split_{k}": v for k, v in report.split_sizes.items()})
        params["faces"] = report.faces
    tracker.log(run_id, params=params)
    tracker.log_dataset(run_id, data, str(spec.data_config().root), "study")
    if report is not None:
        tracker.client.log_dict(run_id, report.to_dict(), "data/report.json")
