"""A command's stores: the Optuna storage for a `with` block, a study by name, both stores checked
before a one-shot command touches them. Imports Optuna: the model commands
(search.cli.model_commands) check their tracking store without this module."""

from __future__ import annotations

from search.cli.common import in_use
from search.storage.sessions import storage_session
from search.tracking.store_check import require_tracking_store


def storage_for(url: str, read_only: bool = False):
    """The storage at `url` for a `with` block, closed after (a one-shot command: no retries;
    `read_only`: it must exist, nothing is created)."""
    in_use(url)
    return storage_session(url, read_only=read_only)


def require_stores(storage_url: str | None, tracking_uri: str) -> None:
    """One-shot commands: each store exists and answers, else one line within seconds."""
    in_use(storage_url, tracking_uri)
    if storage_url is not None:
        with storage_session(storage_url, read_only=True):
            pass
    require_tracking_store(tracking_uri)
