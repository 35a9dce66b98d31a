"""What every command module shares, and nothing heavy (`fer-search --help` imports it): the two
consoles, starting TensorFlow, and the one-line error with every store URL's password masked."""

from __future__ import annotations

import os
import sys

from rich.console import Console

from search import settings
from search.urls import mask_text
from trainer.runtime import load_tensorflow, set_threads

# Tables stay readable when piped to a file or a CI log (rich would assume 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)


def start_tensorflow(threads: int | None) -> None:
    load_tensorflow(threads=threads)
    set_threads(threads)  # TensorFlow was already loaded (tests): the same value, or an error


# The store URLs this command has opened or checked: `one_line` masks their passwords wherever
# an error quotes them, even where a pattern alone cannot tell where a password ends (a space).
_URLS_IN_USE: list[str] = []


def in_use(*urls: str | None) -> None:
    """Remembers store URLs this command opens or checks, for `one_line` to mask."""
    _URLS_IN_USE.extend(url for url in urls if url and url not in _URLS_IN_USE)


def one_line(error: BaseException) -> str:
    """The error in one line, every URL's password masked: those of the stores this command
    used and of the environment's (given whole, so a password with a space is masked too),
    then any other a pattern finds."""
    text = str(error)
    for url in (*_URLS_IN_USE, settings.storage(), os.environ.get("MLFLOW_TRACKING_URI")):
        if url:
            text = mask_text(text, url)
    return mask_text(" ".join(text.split()) or type(error).__name__)
