"""The per-trial deadline (`trial_timeout`) and the watchdog for a trial stuck inside an epoch.

At an epoch boundary: every trial's epoch callback checks its deadline and raises
`TrialTimedOut` at the first boundary past it. The trainer stops that trial (only that member of
a group) and the runner records it FAIL (reason `timed out after N s`, not retried).

Inside an epoch: an epoch can hang (a stuck driver call, a deadlock in native code) or be far
longer than the deadline. No exception can reach a thread blocked in a C call:
`PyThreadState_SetAsyncExc` is delivered only between bytecodes, and where it lands (inside a
storage write, a `finally`, Keras' own bookkeeping) could leave the trial half recorded. So one
watchdog thread per process waits until deadline + grace, where grace is the larger of
FER_SEARCH_TIMEOUT_GRACE_S (300 s) and twice the trial's longest epoch so far (a trial whose
epoch merely straddles the deadline reaches its boundary first). A trial still in flight then
is recorded as timed out (FAIL, permanent, its MLflow run FAILED) from the watchdog's thread,
and the process ends at once with EXIT_TRIAL_STUCK (75, sysexits' EX_TEMPFAIL): a supervisor
(docker compose's `restart: on-failure`, systemd, the cluster's job scheduler) starts a fresh
worker, which carries on with the study. Other trials the process held (its group's members not
yet overdue) stop beating and are re-queued by heartbeat like a dead worker's, resuming from
their checkpoints.

A trial's clock starts when it is claimed, so it includes a one-time feature extraction that its
training triggers; in a group, members share one wall clock (they train in one pass).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from search import settings
from search.contracts import EXIT_TRIAL_STUCK  # 75; tests read it from here

clock = time.monotonic  # read at call time, so tests can move time on
_exit = os._exit  # likewise replaceable: tests must not end the test process

logger = logging.getLogger(__name__)


class TrialTimedOut(Exception):
    """Raised from a trial's epoch callback once its deadline has passed."""


def seconds_text(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


class Deadline:
    """One trial's deadline, `limit_s` seconds after its claim (None: no deadline)."""

    def __init__(self, limit_s: float | None) -> None:
        self.limit_s = limit_s
        self.start = clock()
        self._last_boundary = self.start
        self.longest_epoch = 0.0

    @property
    def reason(self) -> str:
        return f"timed out after {seconds_text(self.limit_s or 0)} s"

    def check(self) -> None:
        """At an epoch boundary: raises TrialTimedOut once the deadline has passed."""
        now = clock()
        self.longest_epoch = max(self.longest_epoch, now - self._last_boundary)
        self._last_boundary = now
        if self.limit_s is not None and now - self.start > self.limit_s:
            raise TrialTimedOut(self.reason)

    def hard_limit(self, grace: float) -> float | None:
        """When the watchdog gives up on the trial reaching a boundary (a `clock()` value)."""
        if self.limit_s is None:
            return None
        return self.start + self.limit_s + max(grace, 2 * self.longest_epoch)


class Watched(Protocol):
    deadline: Deadline

    def fail_stuck(self) -> None:
        """Records the trial as timed out, unless it is already concluded."""


class Watchdog:
    """One thread per process watching the deadlines of the trials it runs (see the module)."""

    def __init__(self, poll_s: float = 1.0) -> None:
        self._watched: list[Watched] = []
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._poll_s = poll_s

    @contextlib.contextmanager
    def watching(self, trials: Iterable[Watched]) -> Iterator[None]:
        trials = [t for t in trials if t.deadline.limit_s is not None]
        if not trials:
            yield
            return
        with self._changed:
            self._watched.extend(trials)
            if self._thread is None:
                self._thread = threading.Thread(target=self._watch, name="trial-watchdog",
                                                daemon=True)
                self._thread.start()
            self._changed.notify_all()
        try:
            yield
        finally:
            with self._changed:
                for trial in trials:
                    self._watched.remove(trial)

    def _watch(self) -> None:
        while True:
            with self._changed:
                while not self._watched:
                    self._changed.wait()
                grace = settings.timeout_grace_s()
                now = clock()
                overdue = [t for t in self._watched
                           if (limit := t.deadline.hard_limit(grace)) is not None and now >= limit]
                if not overdue:
                    self._changed.wait(self._poll_s)
                    continue
            for trial in overdue:
                try:
                    trial.fail_stuck()
                except Exception:  # the exit below matters more than the record
                    logger.exception("could not record a stuck trial as timed out")
            logger.error("a trial is stuck inside an epoch past its deadline; exiting with %d "
                         "so that the worker is restarted", EXIT_TRIAL_STUCK)
            _exit(EXIT_TRIAL_STUCK)
            with self._changed:  # only reached when a test replaced _exit
                self._thread = None
            return
