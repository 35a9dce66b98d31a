"""Riding out a database outage: which errors are transient, retrying a call with backoff
(tenacity), and the RDB storage whose calls retry (`open_storage(..., resilient=True)`, a
worker's study loop)."""

from __future__ import annotations

import functools
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import optuna
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy import exc as sa
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_before_delay,
    wait_exponential,
)

from search import settings
from search.storage import counts, idempotent
from search.storage import optuna_private as private
from search.storage.engines import close_storage, root_message
from search.urls import mask_text

logger = logging.getLogger("search.storage.sessions")
T = TypeVar("T")


_TRANSIENT_TEXT = (
    "database is locked", "server closed the connection", "terminating connection",
    "connection refused", "could not connect", "connection timed out", "timeout expired",
    "the database system is", "connection already closed", "ssl connection has been closed",
    "deadlock detected", "could not serialize access", "connection reset", "broken pipe",
    "no connection to the server", "server conn crashed", "connection to server at",
)
# Connection errors that no wait will fix: fail at once rather than retry for minutes.
_PERMANENT_TEXT = (
    "password authentication failed", "does not exist", "no pg_hba.conf entry",
    "permission denied", "could not translate host name", "authentication failed",
    "file is not a database", "unable to open database file", "no such table",
)


def is_transient(error: BaseException) -> bool:
    """True for database errors that a later attempt may not meet: a restarted or unreachable
    server, a cut connection, a deadlock, SQLite busy. Optuna wraps them in
    `StorageInternalError`; the cause chain is searched."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current).lower()
        if any(marker in text for marker in _PERMANENT_TEXT):
            return False
        if isinstance(current, sa.DBAPIError) and current.connection_invalidated:
            return True
        if isinstance(current, sa.OperationalError | sa.InterfaceError | sa.TimeoutError):
            return True
        if any(marker in text for marker in _TRANSIENT_TEXT):
            return True
        current = current.__cause__ or current.__context__
    return False


def retry_transient(
    call: Callable[[], T],
    *,
    what: str = "a storage call",
    deadline_s: float | None = None,
    url: str | None = None,
) -> T:
    """Runs `call`, retrying with exponential backoff (0.5 s doubling to 10 s, jittered) while
    it fails with a transient database error, for at most `deadline_s` (FER_SEARCH_DB_RETRY_S).

    Each retry is logged as one warning line, with any password of `url` masked. A permanent
    error, or a transient one whose next wait would end past the deadline, is raised as it is.
    """
    def log(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome is not None else None
        # Masked before it is cut: a cut could leave a password's first half unrecognised.
        reason = mask_text(" ".join(f"{type(error).__name__}: {root_message(error)}".split()),
                           url)[:200]
        logger.warning("database unavailable during %s (%s); retrying in %.1f s", what,
                       reason, state.upcoming_sleep)

    retrying = Retrying(
        retry=retry_if_exception(is_transient),
        wait=_jittered,
        stop=stop_before_delay(settings.db_retry_s() if deadline_s is None else deadline_s),
        sleep=lambda seconds: time.sleep(seconds),  # looked up at the call (tests replace it)
        before_sleep=log,
        reraise=True,
    )
    return retrying(call)


_BACKOFF = wait_exponential(multiplier=0.5, max=10.0)  # 0.5 s doubling to 10 s


def _jittered(state: RetryCallState) -> float:
    """The backoff's wait, +-20%: workers cut off together do not all come back together."""
    return _BACKOFF(state) * random.uniform(0.8, 1.2)


class ResilientRDBStorage(optuna.storages.RDBStorage):
    """Optuna's RDBStorage whose calls survive a database restart or a busy SQLite file.

    Every method that reaches the database is retried by `retry_transient`; only the outermost
    call of a thread retries (Optuna's methods call each other), so one logical operation
    never multiplies its waits.

    Retried writes are idempotent: a state change and a new trial each carry a token written
    in their own transaction, which a retry looks up before writing again
    (search.storage.idempotent); the queue's claims carry theirs (search.queue.items). A state
    change to RUNNING (a migrated WAITING trial's claim) records the trial's first heartbeat in
    its transaction, and a new RUNNING trial beats at once: Optuna fails only RUNNING trials
    that have a heartbeat.
    """

    _depth = threading.local()
    retry_s = 0.0  # set by open_storage: FER_SEARCH_DB_RETRY_S for a resilient storage

    def record_heartbeat_once(self, trial_id: int) -> None:
        """One heartbeat, never retried: a missed beat is harmless (the next one comes an
        interval later), and a beat stuck in retries would hold up the trial's end."""
        optuna.storages.RDBStorage.record_heartbeat(self, trial_id)

    def close(self) -> None:
        close_storage(self)

    def __enter__(self) -> ResilientRDBStorage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def set_trial_state_values(self, trial_id: int, state: TrialState,
                               values=None) -> bool:
        """A state change (a claim, a tell) that a retry never repeats: the first attempt
        writes a token on the trial in its own transaction (search.storage.idempotent), and a
        retry that finds the token knows that attempt committed. A claim records the first
        heartbeat in the same transaction."""
        token = uuid.uuid4().hex
        attempts = 0

        def change() -> bool:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and idempotent.state_token(self, trial_id) == token:
                return True  # our first attempt committed before its connection died
            return idempotent.set_state(self, trial_id, state, values, token)

        return self._retrying(change, "set_trial_state_values")

    def create_trial_once(self, study_id: int, template_trial=None):
        """A new trial that a retry never creates twice: it carries a token, looked up by a
        retry before creating again (Optuna's own loop, which retries blindly, is not used).
        Installed as the method Optuna creates every trial through
        (`optuna_private.CREATE_NEW_TRIAL`), for its public `create_new_trial` and its cache."""
        token = uuid.uuid4().hex
        attempts = 0

        def create():
            nonlocal attempts
            attempts += 1
            if attempts > 1:
                found = idempotent.trial_by_token(self, study_id, token)
                if found is not None:
                    return found
            return idempotent.create_trial(self, study_id, template_trial, token)

        return self._retrying(create, "create_new_trial")  # a RUNNING one beats from the start

    def create_trial(self, study_id: int, template_trial) -> FrozenTrial:
        """`create_new_trial`, answering the new trial (its id and number) rather than its id:
        a claimed grid point's trial (search.study.grid_queue) needs both."""
        return self.create_trial_once(study_id, template_trial)

    def count_trials(self, study_id: int, states) -> int:
        """How many trials of the study are in `states` (search.storage.counts.count)."""
        return self._retrying(lambda: counts.count(self, study_id, states), "count_trials")

    def count_failed_for_good(self, study_id: int) -> int:
        """Trials failed for good (search.storage.counts.count_failed_for_good), retried."""
        return self._retrying(lambda: counts.count_failed_for_good(self, study_id),
                              "count_failed_for_good")

    def set_trial_intermediate_values(self, trial_id: int, values: dict[int, float]) -> None:
        """Several steps' intermediate values of one trial in one transaction, retried (a retry
        writes the same rows again: Optuna's write of a step updates it in place)."""
        self._retrying(lambda: idempotent.set_intermediate_values(self, trial_id, values),
                       "set_trial_intermediate_values")

    def retrying(self, call: Callable[[], T], name: str) -> T:
        """`call` (one transaction of the project's own, e.g. the queue's) retried through a
        database outage as this storage's methods are; the caller makes it idempotent."""
        return self._retrying(call, name)

    def _retrying(self, call: Callable[[], T], name: str) -> T:
        depth = getattr(self._depth, "value", 0)
        if depth or not self.retry_s:
            return call()
        self._depth.value = depth + 1
        try:
            return retry_transient(call, what=name, url=self.url, deadline_s=self.retry_s)
        finally:
            self._depth.value = depth


def _retried(name: str) -> Callable[..., Any]:
    method = getattr(optuna.storages.RDBStorage, name)

    @functools.wraps(method)
    def wrapper(self: ResilientRDBStorage, *args: Any, **kwargs: Any) -> Any:
        return self._retrying(lambda: method(self, *args, **kwargs), name)

    return wrapper


# Every RDBStorage method that reaches the database: the public ones, and those Optuna's cache
# calls directly (optuna_private.CACHE_CALLS). Not `create_new_trial`: it calls
# `create_trial_once`, which retries with its token; retried around it too, each attempt would
# carry a new token, and a first attempt whose answer was lost would leave a second trial.
for _name in (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_trial_user_attrs",
    "get_trial_system_attrs", "get_all_studies", "set_trial_param",
    "get_trial_param", "set_trial_intermediate_value", "set_trial_user_attr",
    "set_trial_system_attr", "get_trial_id_from_study_id_trial_number", "get_trial",
    "get_all_trials", "get_best_trial", "record_heartbeat", "get_current_version",
    "get_head_version", *private.CACHE_CALLS,
):
    setattr(ResilientRDBStorage, _name, _retried(_name))
setattr(ResilientRDBStorage, private.CREATE_NEW_TRIAL, ResilientRDBStorage.create_trial_once)
