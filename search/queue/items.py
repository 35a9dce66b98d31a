"""The queue's transactions: each is one transaction on the queue's own tables and never
retries (search.study.grid_queue retries them through the storage, `retrying`).

- `enqueue`: rows for the points that have none (one row per point for its life: the unique
  (study, point) admits no second), after the queue's last position.
- `claim`: at most `window` queued rows of the study in queue order, read through the index
  (study, state, position) so that a claim costs as much with 10 or 10,000 points waiting;
  on PostgreSQL `FOR UPDATE SKIP LOCKED`: rows another worker's claim is looking at are skipped,
  not waited for, and a row is re-checked queued after it is locked, so it is never taken
  twice. On SQLite every transaction begins with `BEGIN IMMEDIATE` (search.storage.engines):
  claims are serialised. The caller's `choose` picks which rows to take (one batch); they are
  marked claimed with the caller's token in the same transaction. A retry whose first attempt
  committed unseen finds its rows by the token (`claimed_by`).
- `link`: the trial created for a claimed row, written only while the row is still that
  claim's (a claim recovered meanwhile is not: its trial must not run).
- `settle`, `requeue`, `give_up`: a row's end, or its next attempt.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from search.queue.models import CLAIMED, DONE, FAILED, QUEUED, QueueItem

WINDOW = 32  # rows a claim looks at (and locks for a moment): a batch's members and a few more


class Queued(NamedTuple):
    """A row as a claim sees it: its id, its grid point's params (None: a copy of a trial that
    was not a grid point), and whether it must train alone."""

    item_id: int
    params: dict[str, Any] | None
    alone: bool = False


class Claimed(NamedTuple):
    """A claimed row: its id, what its trial carries (`template`: params, system and user
    attrs), the trial already made for it (a store migrated with WAITING trials), if any, and
    the claim's token (its `link`)."""

    item_id: int
    template: dict[str, Any]
    trial_id: int | None
    token: str


Choose = Callable[[Sequence[Queued]], Sequence[int]]


@contextmanager
def transaction(engine) -> Iterator[Session]:
    """One transaction on the queue's tables, committed on leaving, rolled back on an error."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        yield session


def enqueue(engine, study_id: int, entries: Sequence[tuple[str | None, dict, bool]]) -> int:
    """Queues each (point key, template, alone) whose point has no row yet (None keys always),
    in this order, after the queue's last position; returns how many were queued."""
    with transaction(engine) as session:
        keys = [key for key, _, _ in entries if key is not None]
        held = set(session.execute(select(QueueItem.point_key).where(
            QueueItem.study_id == study_id, QueueItem.point_key.in_(keys))).scalars()) \
            if keys else set()
        position = _next_position(session, study_id)
        queued = 0
        for key, template, alone in entries:
            if key is not None and key in held:
                continue
            session.add(QueueItem(study_id=study_id, point_key=key, position=position,
                                  template=json.dumps(template), alone=alone, state=QUEUED))
            held.add(key)
            position += 1
            queued += 1
        return queued


def claim(engine, study_id: int, choose: Choose, token: str,
          window: int = WINDOW) -> list[Claimed]:
    """Claims the rows `choose` picks among the first `window` this transaction can lock, in
    queue order; [] when it locked none or chose none."""
    with transaction(engine) as session:
        rows = session.execute(
            select(QueueItem)
            .where(QueueItem.study_id == study_id, QueueItem.state == QUEUED)
            .order_by(QueueItem.position, QueueItem.item_id).limit(window)
            .with_for_update(skip_locked=True)).scalars().all()
        if not rows:
            return []
        by_id = {row.item_id: row for row in rows}
        candidates = [Queued(row.item_id, json.loads(row.template).get("point"), row.alone)
                      for row in rows]
        chosen = [by_id[item_id] for item_id in choose(candidates) if item_id in by_id]
        now = _now(session)
        for row in chosen:
            row.state, row.token, row.claimed_at = CLAIMED, token, now
        return [Claimed(row.item_id, json.loads(row.template), row.trial_id, token)
                for row in chosen]


def claimed_by(engine, study_id: int, token: str) -> list[Claimed]:
    """The rows a claim with `token` took, if it committed (in queue order)."""
    with transaction(engine) as session:
        rows = session.execute(
            select(QueueItem).where(QueueItem.study_id == study_id, QueueItem.token == token,
                                    QueueItem.state == CLAIMED)
            .order_by(QueueItem.position, QueueItem.item_id)).scalars().all()
        return [Claimed(row.item_id, json.loads(row.template), row.trial_id, token)
                for row in rows]


def link(engine, item_id: int, token: str, trial_id: int) -> bool:
    """Records the trial made for a claimed row; False when the row is no longer this claim's
    (recovered meanwhile: the trial must not run)."""
    with transaction(engine) as session:
        found = session.execute(
            update(QueueItem)
            .where(QueueItem.item_id == item_id, QueueItem.token == token,
                   QueueItem.state == CLAIMED)
            .values(trial_id=trial_id)).rowcount
        return found == 1


def settle(engine, trial_ids: Sequence[int], state: str) -> None:
    """The claimed rows of these trials end: `DONE`, or `FAILED` (interrupted: re-queued by the
    next fill)."""
    if not trial_ids:
        return
    with transaction(engine) as session:
        session.execute(update(QueueItem)
                        .where(QueueItem.trial_id.in_(list(trial_ids)),
                               QueueItem.state == CLAIMED)
                        .values(state=state))


def requeue(engine, item_id: int, holder: int | None, template: dict | None,
            alone: bool) -> bool:
    """The row's next attempt: queued again at the queue's end with `template` (None: given
    up, the row is done), if its trial is still `holder` and it is not queued or done already.
    True when this call did it."""
    with transaction(engine) as session:
        row = session.execute(select(QueueItem).where(QueueItem.item_id == item_id)
                              .with_for_update()).scalar_one_or_none()
        if row is None or row.trial_id != holder or row.state not in (CLAIMED, FAILED):
            return False
        if template is None:
            row.state = DONE
            return True
        row.state, row.token, row.trial_id, row.claimed_at = QUEUED, None, None, None
        row.template, row.alone = json.dumps(template), alone
        row.position = _next_position(session, row.study_id)
        return True


def release(engine, item_id: int) -> bool:
    """A claimed row whose trial was never created, queued again in its place (its worker died
    between the claim and the trial's creation)."""
    with transaction(engine) as session:
        return session.execute(
            update(QueueItem)
            .where(QueueItem.item_id == item_id, QueueItem.state == CLAIMED,
                   QueueItem.trial_id.is_(None))
            .values(state=QUEUED, token=None, claimed_at=None)).rowcount == 1


def item_of(engine, trial_id: int) -> tuple[int, str | None, str] | None:
    """The row holding `trial_id`: (item id, point key, state), or None."""
    with transaction(engine) as session:
        found = session.execute(
            select(QueueItem.item_id, QueueItem.point_key, QueueItem.state)
            .where(QueueItem.trial_id == trial_id)).first()
        return None if found is None else (found[0], found[1], found[2])


def unlinked(engine, study_id: int, older_than_s: float) -> list[int]:
    """Claimed rows still without a trial after `older_than_s` seconds: their worker died
    between its claim and the trial's creation."""
    with transaction(engine) as session:
        cutoff = _now(session) - timedelta(seconds=older_than_s)
        return list(session.execute(
            select(QueueItem.item_id)
            .where(QueueItem.study_id == study_id, QueueItem.state == CLAIMED,
                   QueueItem.trial_id.is_(None), QueueItem.claimed_at < cutoff)).scalars())


def claimed_since(engine, study_id: int, older_than_s: float) -> list[tuple[int, int]]:
    """(item id, trial id) of the rows claimed more than `older_than_s` seconds ago."""
    with transaction(engine) as session:
        cutoff = _now(session) - timedelta(seconds=older_than_s)
        return [(item_id, trial_id) for item_id, trial_id in session.execute(
            select(QueueItem.item_id, QueueItem.trial_id)
            .where(QueueItem.study_id == study_id, QueueItem.state == CLAIMED,
                   QueueItem.trial_id.is_not(None), QueueItem.claimed_at < cutoff))]


def failed(engine, study_id: int) -> list[tuple[int, int, dict]]:
    """(item id, trial id, template) of the rows whose trial was interrupted."""
    with transaction(engine) as session:
        return [(item_id, trial_id, json.loads(template))
                for item_id, trial_id, template in session.execute(
                    select(QueueItem.item_id, QueueItem.trial_id, QueueItem.template)
                    .where(QueueItem.study_id == study_id, QueueItem.state == FAILED)
                    .order_by(QueueItem.position))]


def counts(engine, study_id: int) -> dict[str, int]:
    """How many rows of the study are in each state (one GROUP BY)."""
    with transaction(engine) as session:
        return {state: int(n) for state, n in session.execute(
            select(QueueItem.state, func.count()).where(QueueItem.study_id == study_id)
            .group_by(QueueItem.state))}


def any_queued(engine, study_id: int) -> bool:
    """Whether a row of the study is queued (locked by a claim or not): one indexed row."""
    with transaction(engine) as session:
        return session.execute(select(QueueItem.item_id).where(
            QueueItem.study_id == study_id, QueueItem.state == QUEUED).limit(1)).first() \
            is not None


def drop_study(engine, study_id: int) -> None:
    """Deletes a study's rows (a deleted study whose id the database may reuse)."""
    with transaction(engine) as session:
        session.query(QueueItem).filter(QueueItem.study_id == study_id).delete()


def _next_position(session: Session, study_id: int) -> int:
    last = session.execute(select(func.max(QueueItem.position))
                           .where(QueueItem.study_id == study_id)).scalar()
    return 0 if last is None else last + 1


def _now(session: Session) -> datetime:
    """The database's clock (every worker's claims and cut-offs on one clock), naive."""
    now = session.execute(select(func.now())).scalar()
    if isinstance(now, str):  # SQLite's CURRENT_TIMESTAMP, as text
        now = datetime.fromisoformat(now)
    return now.replace(tzinfo=None)
