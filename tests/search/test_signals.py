"""search.study.signals: one behaviour per signal per command (the table in its docstring)."""

from __future__ import annotations

import signal

import pytest

from search.study import signals


class _Loop:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def request_stop(self, reason: str) -> None:
        self.reasons.append(reason)


def test_worker_finishes_the_trial_on_either_signal_then_a_second_sigint_interrupts():
    loop = _Loop()
    with signals.for_command(signals.WORKER), signals.stoppable(loop):
        signal.raise_signal(signal.SIGTERM)
        assert loop.reasons == ["stopped by SIGTERM"]
        signal.raise_signal(signal.SIGTERM)  # SIGTERM again: no escalation
        assert len(loop.reasons) == 2
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


def test_worker_sigint_first_asks_the_loop_to_stop():
    loop = _Loop()
    with signals.for_command(signals.WORKER), signals.stoppable(loop):
        signal.raise_signal(signal.SIGINT)
        assert loop.reasons == ["stopped by SIGINT"]
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("command", [signals.RUN, signals.WORKER])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_with_no_loop_running_a_signal_stops_at_once(command, signum):
    with signals.for_command(command), pytest.raises(KeyboardInterrupt):
        signal.raise_signal(signum)


def test_run_interrupts_on_sigint_and_finishes_the_trial_on_sigterm():
    loop = _Loop()
    with signals.for_command(signals.RUN), signals.stoppable(loop):
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signal.SIGINT)
        assert loop.reasons == []
        signal.raise_signal(signal.SIGTERM)
        assert loop.reasons == ["stopped by SIGTERM"]


def test_handlers_are_restored_and_a_library_caller_gets_runs_behaviour():
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    loop = _Loop()
    with signals.stoppable(loop):  # no command installed its handlers: `run`'s are used
        signal.raise_signal(signal.SIGTERM)
        assert loop.reasons == ["stopped by SIGTERM"]
    assert {s: signal.getsignal(s) for s in before} == before
    with pytest.raises(ValueError):
        with signals.for_command("dashboard"):
            pass
