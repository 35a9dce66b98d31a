"""Every signal handler of fer-search: one behaviour per signal per command, defined here only.

A command installs its handlers once, for its whole length (`for_command`); a study loop that is
running registers itself (`stoppable`) so that a "finish the trial" signal reaches its
`request_stop()`. The study loop itself never looks at signals.

``fer-search run`` (one process):

- SIGINT (Ctrl-C): interrupts the running trial at once. It is recorded FAIL ("interrupted") in
  Optuna and KILLED in MLflow, its grid point is re-queued, the study's run is closed KILLED, and
  the command exits 130. The next ``run`` or worker runs the point again.
- SIGINT again, while that is being recorded: abandons the recording; the trial stays RUNNING
  until a later start finds its heartbeat stale (after the grace period), fails and re-queues it
  and closes its MLflow run FAILED.
- SIGTERM: finishes the running trial, starts no other, closes the study's run FINISHED, exits 0.
  With no trial loop running (loading data, before the study opens) it stops at once, like
  SIGINT.

``fer-search worker`` (one of many on a shared study, or started by ``run --workers N``):

- SIGINT or SIGTERM: finishes the running trial, starts no other, exits 0 (a supervisor scaling
  down sends SIGTERM; a person at the terminal presses Ctrl-C). With no trial loop running it
  stops at once and exits 0: nothing is lost.
- SIGINT again: interrupts the trial as ``run``'s SIGINT does (recorded, re-queued); exits 0,
  since stopping was asked for.
- SIGTERM again: no change; the trial is finished (a supervisor escalates with SIGKILL, which the
  heartbeat covers).

``fer-search run --workers N`` (the parent of N local workers):

- Before the workers start (preparing the study), as ``run``.
- While they run: SIGINT and SIGTERM, every time, are forwarded to each live worker, which acts as
  a worker does (so Ctrl-C once finishes the trials, twice interrupts them); the parent waits for
  all of them. It exits 130 if it got a SIGINT, else with the workers' summed-up code
  (`search.study.workers.aggregate_exit_codes`). The workers run in their own process groups, so a
  terminal's Ctrl-C reaches them once, through the parent.

"The running trial" is the group being trained together (a grid group, or a group of a random
or TPE batch); a batch's groups not yet started are handed back to the queue at once
(search.study.ask_batch.hand_back), failed and re-queued with their params, for the next run or
worker. A SIGINT that interrupts a group hands them back the same way.

Handlers are Python-level: they run between bytecodes of the main thread, so a trial stuck inside
a long native call (a TensorFlow step) sees its interrupt when that call returns. Outside the main
thread nothing is installed (Python cannot handle signals there).
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Protocol

RUN = "run"
WORKER = "worker"
_COMMANDS = (RUN, WORKER)


class Stoppable(Protocol):
    """A loop that can be asked to stop after its current trial (`search.study.loop.StudyLoop`)."""

    def request_stop(self, reason: str) -> None: ...


class _Policy:
    """What the installed handlers do; see the module docstring."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.loops: list[Stoppable] = []
        self.stop_requested = False

    def __call__(self, signum: int, frame) -> None:
        name = signal.Signals(signum).name
        if self.command == RUN and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if not self.loops:  # nothing running to finish: stop now
            raise KeyboardInterrupt
        if self.command == WORKER and signum == signal.SIGINT and self.stop_requested:
            raise KeyboardInterrupt  # the second Ctrl-C: interrupt the trial
        if not self.stop_requested:
            again = " (Ctrl-C again to interrupt it)" if self.command == WORKER else ""
            _say(f"{name}: stopping after the current trial{again}")
        self.stop_requested = True
        for loop in self.loops:
            loop.request_stop(f"stopped by {name}")


# The policy of the command this process runs; None until a command (or a library caller's
# first `stoppable`) installs one.
_policy: _Policy | None = None


@contextlib.contextmanager
def for_command(command: str) -> Iterator[None]:
    """Installs `command`'s SIGINT and SIGTERM handlers for the block, then restores the
    previous ones.

    Args:
        command: ``run`` or ``worker`` (``run --workers N`` is ``run`` until its workers start,
            then `forwarding`).
    """
    global _policy
    if command not in _COMMANDS:
        raise ValueError(f"no signal policy for command {command!r}")
    previous_policy, _policy = _policy, _Policy(command)
    try:
        with handling(_policy, signal.SIGINT, signal.SIGTERM):
            yield
    finally:
        _policy = previous_policy


@contextlib.contextmanager
def stoppable(loop: Stoppable) -> Iterator[None]:
    """Lets signals reach `loop.request_stop` while the block runs.

    Used by `run_study` around its loop. Called outside any command (a library caller, a test),
    it installs ``run``'s handlers for the block, so that SIGTERM still finishes the trial.
    """
    if _policy is None:
        with for_command(RUN), stoppable(loop):
            yield
        return
    policy = _policy
    policy.loops.append(loop)
    try:
        yield
    finally:
        policy.loops.remove(loop)


@contextlib.contextmanager
def forwarding(on_signal: Callable[[int], None]) -> Iterator[None]:
    """``run --workers N`` while its workers run: each SIGINT and SIGTERM is handed to
    `on_signal` (which forwards it to the workers) instead of stopping this process."""
    with handling(lambda signum, frame: on_signal(signum), signal.SIGINT, signal.SIGTERM):
        yield


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


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)
