"""Signal handlers installed for the length of a block."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def handling(handler: Callable, *signums: int) -> Iterator[None]:
    """Installs `handler` for `signums` while the block runs, then restores the previous
    handlers. Outside the main thread Python cannot handle signals: nothing is installed."""
    try:
        previous = {signum: signal.signal(signum, handler) for signum in signums}
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
