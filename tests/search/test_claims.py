"""Claims that scale (issue 18; the queue's own tables since issue 31, search.queue.items): a
claim is one transaction over a few queued rows; on PostgreSQL the rows another claim holds are
skipped, never waited for. Exactly-once on every path is tests/search/test_exactly_once.py's."""

from __future__ import annotations

import json
import threading

import optuna
import pytest
from optuna.trial import TrialState
from sqlalchemy import event

from search.queue import items
from search.queue.models import QueueItem
from search.spec.loader import load_spec
from search.storage.locks import study_lock
from search.storage.sessions import open_storage
from search.study import grid_queue
from tests.search.studyhelp import write_spec


def _rows(storage, study) -> list[QueueItem]:
    """The study's queue rows, in queue order."""
    with items.transaction(storage.engine) as session:
        return list(session.query(QueueItem).filter(
            QueueItem.study_id == grid_queue.study_id_of(study, storage))
            .order_by(QueueItem.position))

SPACE = {"learning_rate": [1.0e-3, 2.0e-3, 3.0e-3], "batch_size": [16, 32],
         "epochs": [2], "head_width": [16, 32]}  # 12 points


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/optuna.db"
    return request.getfixturevalue("pg_cluster").url()


def _queued(url: str, folder, name: str, batch_of=None):
    spec = load_spec(write_spec(folder, name=name, space=SPACE))
    storage = open_storage(url, resilient=True)
    study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True)
    with study_lock(url, name):
        grid_queue.fill_queue(study, spec, batch_of)
    return spec, storage, study


def _by_batch(params: dict) -> int:
    return params["batch_size"]


def test_the_queue_is_filled_group_by_group_and_a_second_fill_adds_nothing(url, tmp_path):
    spec, storage, study = _queued(url, tmp_path, "grouped", _by_batch)
    try:
        sizes = [json.loads(row.template)["point"]["batch_size"] for row in _rows(storage, study)]
        assert len(sizes) == 12 and sizes == sorted(sizes, key=sizes.index)  # contiguous
        with study_lock(url, "grouped"):
            assert grid_queue.fill_queue(study, spec, _by_batch) == 0
        assert len(_rows(storage, study)) == 12
        assert study.get_trials(deepcopy=False) == []  # Optuna's trials come with claims
    finally:
        storage.close()


def test_a_claim_reads_a_bounded_window_whatever_the_queue(url, tmp_path):
    _, storage, study = _queued(url, tmp_path, "window")
    selects: list[str] = []

    def seen(conn, cursor, sql, parameters, context, executemany):
        flat = " ".join(sql.split()).upper()
        if flat.startswith("SELECT " + QueueItem.__tablename__.upper() + ".ITEM_ID"):
            selects.append(flat)

    event.listen(storage.engine, "before_cursor_execute", seen)
    try:
        group = grid_queue.claim_batch(study, storage, _by_batch, window=5)
        assert selects and all(" LIMIT " in s for s in selects), selects
        if url.startswith("postgresql"):
            assert all("FOR UPDATE SKIP LOCKED" in s for s in selects), selects
        # Of the first 5 queued points, the first one's group (window 5 < the group's 6).
        assert 1 <= len(group) <= 5
        assert len({grid_queue.params_of(t._cached_frozen_trial)["batch_size"]
                    for t in group}) == 1
    finally:
        event.remove(storage.engine, "before_cursor_execute", seen)
        storage.close()


@pytest.mark.postgres
def test_a_claim_skips_the_rows_another_claim_holds_instead_of_waiting(pg_cluster, tmp_path):
    url = pg_cluster.url()
    _, storage_a, study_a = _queued(url, tmp_path, "skip")
    storage_b = open_storage(url, resilient=True)
    study_b = optuna.load_study(study_name="skip", storage=storage_b)
    holding, release = threading.Event(), threading.Event()
    taken_a: list[int] = []

    def choose_and_pause(waiting):  # A's rows are locked while it chooses: pause it there
        holding.set()
        release.wait(60)
        return [waiting[0].item_id]

    def claim_a() -> None:
        taken_a.extend(items.claim(storage_a.engine, study_id, choose_and_pause, "a" * 32, 3))

    study_id = grid_queue.study_id_of(study_a, storage_a)

    thread_a = threading.Thread(target=claim_a, daemon=True)
    try:
        thread_a.start()
        assert holding.wait(60), "A's claim never locked its rows"
        taken_b: list = []
        thread_b = threading.Thread(target=lambda: taken_b.extend(grid_queue.claim_batch(
            study_b, storage_b, lambda params: None, window=3)), daemon=True)
        thread_b.start()
        thread_b.join(60)
        assert not thread_b.is_alive(), "B waited for A's rows"
        assert not release.is_set() and len(taken_b) == 1  # B claimed while A held its rows
        release.set()
        thread_a.join(60)
        rows = _rows(storage_b, study_b)
        assert len(taken_a) == 1 and taken_a[0].item_id == rows[0].item_id
        # B took the first row A had not locked: A's window was the first 3 rows.
        assert [row.state for row in rows[:5]] == ["claimed", "queued", "queued", "claimed",
                                                   "queued"]
        assert rows[3].trial_id == taken_b[0]._trial_id
        running = study_b.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        assert [t._trial_id for t in running] == [taken_b[0]._trial_id]
    finally:
        release.set()
        thread_a.join(60)
        storage_a.close()
        storage_b.close()
