"""The queue schema's own migration: creates the queue's tables and moves a store of the old
layout (issue 31) into them, once. `search.storage.sessions.open_storage` runs it under the
lock it creates Optuna's tables under, which every process sharing the store sees.

Versions (`models.SchemaVersion`, row "queue"):

- 0: no queue tables. A grid point was a WAITING trial in Optuna's own tables, claimed by an
  update of Optuna's trial row; `fer_search_grid_points` (study, point) -> trial said who held
  a point.
- 1: `fer_search_queue` (search.queue.models). Upgrading from 0 makes one row per point of
  `fer_search_grid_points`, in the state of its trial (a WAITING trial stays the point's trial
  and is started, not created, when claimed), then drops the old table.

`version` costs one read: a worker opening a current store takes no lock.
"""

from __future__ import annotations

import json

from optuna.trial import TrialState
from sqlalchemy import inspect, select, text

from search.contracts import failed_for_good
from search.queue import items
from search.queue.models import (
    CLAIMED,
    DONE,
    FAILED,
    QUEUED,
    Base,
    QueueItem,
    SchemaVersion,
)

VERSION = 1
OLD_POINT_TABLE = "fer_search_grid_points"  # version 0's (study, point) -> trial
OLD_POINT_ATTR = "fer_search:grid_point"  # version 0's system attr: the trial's grid point
OLD_ALONE_ATTR = "fer_search:alone"


def version(engine) -> int:
    """The store's queue schema version (0: no queue tables yet)."""
    if not inspect(engine).has_table(SchemaVersion.__tablename__):
        return 0
    with items.transaction(engine) as session:
        found = session.execute(select(SchemaVersion.version)
                                .where(SchemaVersion.name == "queue")).scalar()
    return 0 if found is None else int(found)


def upgrade(storage) -> None:
    """Brings the store at `storage` (Optuna's RDBStorage, its tables made) to `VERSION`:
    creates the queue's tables, migrating an older layout; a no-op when current. The caller
    serialises it across processes (open_storage's tables lock)."""
    if version(storage.engine) == VERSION:
        return
    rows = _old_rows(storage)
    with storage.engine.begin() as connection:
        Base.metadata.create_all(connection, checkfirst=True)
    with items.transaction(storage.engine) as session:
        session.add_all(rows)
        if inspect(storage.engine).has_table(OLD_POINT_TABLE):
            session.execute(text(f"DROP TABLE {OLD_POINT_TABLE}"))
        session.merge(SchemaVersion(name="queue", version=VERSION))


def _old_rows(storage) -> list[QueueItem]:
    """Version 0's points as queue rows, each in its trial's state (read through Optuna's
    public storage API)."""
    if not inspect(storage.engine).has_table(OLD_POINT_TABLE):
        return []
    with storage.engine.connect() as connection:
        held = connection.execute(text(
            f"SELECT study_id, point_key, trial_id FROM {OLD_POINT_TABLE}")).all()
    rows = []
    for study_id, key, trial_id in held:
        try:
            trial = storage.get_trial(trial_id)
        except KeyError:  # a deleted study's row
            continue
        point = trial.system_attrs.get(OLD_POINT_ATTR)
        system = {k: v for k, v in trial.system_attrs.items()
                  if k in ("failed_trial", "retry_history")}
        template = {"point": json.loads(point) if point else trial.system_attrs.get(
            "fixed_params"), "system": system, "user": {}}
        rows.append(QueueItem(
            study_id=study_id, point_key=key, position=trial.number,
            template=json.dumps(template),
            alone=bool(trial.system_attrs.get(OLD_ALONE_ATTR)),
            state=_state_of(trial), trial_id=trial_id, token=None, claimed_at=None))
    return rows


def _state_of(trial) -> str:
    if trial.state == TrialState.WAITING:
        return QUEUED
    if trial.state == TrialState.RUNNING:
        return CLAIMED  # its worker's heartbeat decides: alive, or recovered when it stops
    if trial.state == TrialState.FAIL and not failed_for_good(trial):
        return FAILED
    return DONE
