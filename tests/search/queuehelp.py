"""Reading a study's grid queue (search.queue) in tests: how many points wait, are claimed,
done, or failed."""

from __future__ import annotations

import optuna

from search.queue import items


def queue_counts(storage_url: str, study_name: str) -> dict[str, int]:
    """The study's queue rows by state (`queued`, `claimed`, `done`, `failed`)."""
    storage = optuna.storages.RDBStorage(storage_url, skip_compatibility_check=True)
    try:
        return items.counts(storage.engine, storage.get_study_id_from_name(study_name))
    finally:
        storage.engine.dispose()
