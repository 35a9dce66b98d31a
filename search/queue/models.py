"""The queue's tables, as its own SQLAlchemy models (its own metadata: Optuna's schema and its
alembic migrations never see them; `search.queue.schema` creates and migrates them).

`QueueItem`: one row per grid point of a study (or per queued copy of a lost trial), for the
point's whole life. Its state:

- ``queued``: waiting for a claim, in `position` order (`template`: what the trial will carry);
- ``claimed``: a worker holds it (`token`) since `claimed_at`; `trial_id` is the Optuna trial it
  created for it (None for the moment between the claim and the trial's creation);
- ``done``: its trial finished (complete, pruned, or failed for good);
- ``failed``: its trial was interrupted (FAIL, not for good): the next fill re-queues it.

The unique (study_id, point_key) is the backstop of exactly-once: one row per grid point.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, DateTime, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

QUEUED, CLAIMED, DONE, FAILED = "queued", "claimed", "done", "failed"


class Base(DeclarativeBase):
    """The queue's metadata, apart from Optuna's."""


class QueueItem(Base):
    __tablename__ = "fer_search_queue"
    __table_args__ = (
        UniqueConstraint("study_id", "point_key", name="fer_search_queue_point"),
        # A claim's read: the first queued rows of a study, whatever the queue's length.
        Index("fer_search_queue_claim", "study_id", "state", "position"),
    )

    item_id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    study_id: Mapped[int] = mapped_column(Integer, nullable=False)
    point_key: Mapped[str | None] = mapped_column(String(64))  # None: not a grid point
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    template: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: params, system, user
    alone: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    state: Mapped[str] = mapped_column(String(8), nullable=False, default=QUEUED)
    token: Mapped[str | None] = mapped_column(String(32))
    trial_id: Mapped[int | None] = mapped_column(Integer)
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime)


class SchemaVersion(Base):
    """The queue schema's version (one row, `name` = "queue"): `search.queue.schema` upgrades
    a store whose version is older."""

    __tablename__ = "fer_search_schema"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
