"""What the command modules share: the two consoles and the steps many commands begin with
(start TensorFlow, open a store for a `with` block, check the stores exist and answer)."""

from __future__ import annotations

import sys

from rich.console import Console

from search.errors import InputError

# Tables stay readable when piped to a file or a CI log (rich would assume 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def start_tensorflow(threads: int | None) -> None:
    from trainer.runtime import load_tensorflow, set_threads

    load_tensorflow(threads=threads)
    set_threads(threads)  # TensorFlow was already loaded (tests): the same value, or an error


# The store URLs this command has opened or checked: `one_line` masks their passwords wherever
# an error quotes them, even where a pattern alone cannot tell where a password ends (a space).
_URLS_IN_USE: list[str] = []


def _in_use(*urls: str | None) -> None:
    _URLS_IN_USE.extend(url for url in urls if url and url not in _URLS_IN_USE)


def storage_for(url: str, read_only: bool = False):
    """The storage at `url` for a `with` block, closed after (a one-shot command: no retries;
    `read_only`: it must exist, nothing is created)."""
    from search.storage.sessions import storage_session

    _in_use(url)
    return storage_session(url, read_only=read_only)


def require_stores(storage_url: str | None, tracking_uri: str) -> None:
    """One-shot commands: each store exists and answers, else one line within seconds."""
    from search.storage.sessions import storage_session
    from search.tracking.store_check import require_tracking_store

    _in_use(storage_url, tracking_uri)
    if storage_url is not None:
        with storage_session(storage_url, read_only=True):
            pass
    require_tracking_store(tracking_uri)


def load_study_named(name: str, storage):
    import optuna

    names = [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    if name not in names:
        raise InputError(f"no study named {name!r} in the storage; studies there: "
                         f"{', '.join(names) or 'none'}")
    return optuna.load_study(study_name=name, storage=storage)


def one_line(error: BaseException) -> str:
    """The error in one line, every URL's password masked: those of the stores this command
    used and of the environment's (given whole, so a password with a space is masked too),
    then any other a pattern finds."""
    import os

    from search import settings
    from search.urls import mask_text

    text = str(error)
    for url in (*_URLS_IN_USE, settings.storage(), os.environ.get("MLFLOW_TRACKING_URI")):
        if url:
            text = mask_text(text, url)
    return mask_text(" ".join(text.split()) or type(error).__name__)
