"""The one wait of tests/infra: poll a condition until it holds, with a clear message when it does
not. What the cluster, PgBouncer, the MLflow server, the browser tests' servers and the workers'
tests wait for all goes through `wait_for`; `port_open` and `http_ok` are its usual conditions.

A timeout says what was awaited, for how long, what was last seen (the last value or the error
the poll raised) and the tail of the log that explains it; a watched process that exits meanwhile
ends the wait at once (no waiting out the timeout for a server that died on start).
"""

from __future__ import annotations

import socket
import time
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol, TypeVar

T = TypeVar("T")
TAIL = 3000  # characters of a log a failure shows


class Watched(Protocol):
    """A process whose output goes to a log file (a worker, a server)."""

    process: object  # subprocess.Popen
    log: Path


def wait_for(condition: Callable[[], T], timeout: float, what: str, interval: float = 0.2,
             watch: Iterable[Watched] = (), log: Path | None = None) -> T:
    """Polls `condition()` until it returns something truthy; returns it.

    A poll that raises is retried (the store may not exist yet). On timeout an AssertionError
    names `what`, the last error or value seen and the tail of `log`; a watched process that
    exits meanwhile fails the wait at once, with its output.
    """
    watch = tuple(watch)
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    last_value = None
    while True:
        try:
            value = condition()
        except Exception as error:  # noqa: BLE001  (kept for the failure message)
            last_error, value = error, None
        else:
            last_error, last_value = None, value
        if value:
            return value
        for process in watch:
            if process.process.poll() is not None:
                raise AssertionError(
                    f"waiting for {what}: {process.log.stem} exited with "
                    f"{process.process.returncode}; last seen: {_seen(last_error, last_value)}; "
                    f"its output:\n{_tail(process.log)}")
        if time.monotonic() >= deadline:
            shown = f"\n{log.name}:\n{_tail(log)}" if log is not None else ""
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last "
                                 f"seen: {_seen(last_error, last_value)}{shown}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Something accepts TCP connections at host:port."""
    try:
        with socket.create_connection((host, port), 1):
            return True
    except OSError:
        return False


def http_ok(url: str) -> bool:
    """A GET of `url` answers 200 (no login: /health and the like)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:  # refused, reset, or an HTTP error status (HTTPError is an OSError)
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-TAIL:] if log.exists() else "(no log)"


def _seen(error: BaseException | None, value) -> str:
    if error is not None:
        return f"{type(error).__name__}: {' '.join(str(error).split())[:500]}"
    return repr(value)[:500]
