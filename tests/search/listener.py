"""A server that counts who knocks: it accepts each TCP connection, counts it and hangs up at
once. Tests of "fails fast, no retries" count the attempts a command made instead of timing it
(a bound in seconds turns red on a slower machine; a retry loop shows as more than one or two
attempts on any machine)."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class HangUp:
    """The listener's port and how many connections it has accepted so far."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(16)
        self.port: int = self._sock.getsockname()[1]
        self._count = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def attempts(self) -> int:
        with self._lock:
            return self._count

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:  # closed: the test is over
                return
            with self._lock:
                self._count += 1
            conn.close()

    def close(self) -> None:
        self._sock.close()
        self._thread.join(timeout=5)


def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (bound, then released, never listened on)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def hang_up() -> Iterator[HangUp]:
    """A `HangUp` listener on 127.0.0.1 for the block's length."""
    listener = HangUp()
    try:
        yield listener
    finally:
        listener.close()
