"""The store suite, run on SQLite and on the real PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import inspect, text

from cl_assets.core.store import Store, UnknownInteractionError
from cl_assets.core.store.engine import current_revision, head_revision
from cl_assets.settings import Settings


def _row(i: int, **extra: object) -> dict:
    row = {
        "id": f"t-{i}",
        "created_at": datetime(2026, 11, 1, tzinfo=UTC),
        "prompt": f"question {i}",
        "response": f"answer {i}",
        "pii_types": [],
        "source": "test",
        "helpful": None,
    }
    row.update(extra)
    return row


@pytest.fixture
def store(any_db_settings: Settings):
    s = Store.from_settings(any_db_settings)
    yield s
    s.close()


def test_migrates_to_head_with_indexes(store: Store) -> None:
    assert current_revision(store.engine) == head_revision()
    insp = inspect(store.engine)
    assert {"interactions", "feedback_events", "snapshots", "adapters", "deployments", "learning_events"} <= set(
        insp.get_table_names()
    )
    indexed = {tuple(ix["column_names"]) for ix in insp.get_indexes("feedback_events")}
    assert ("created_at",) in indexed
    # Opening again is a no-op, not a second migration.
    Store(store.url).close()
    assert current_revision(store.engine) == head_revision()


def test_insert_is_idempotent_on_id(store: Store) -> None:
    assert store.insert_interactions([_row(1), _row(2)]) == ["t-1", "t-2"]
    assert store.insert_interactions([_row(2), _row(3)]) == ["t-3"]
    assert store.count_interactions() == 3


def test_feedback_is_appended_and_latest_value_mirrored(store: Store) -> None:
    store.insert_interactions([_row(1)])
    first = store.add_feedback("t-1", True)
    second = store.add_feedback("t-1", False)
    assert second > first
    assert store.get_interaction("t-1").helpful is False
    store.add_feedback("t-1", None, kind="regenerate")
    row = store.get_interaction("t-1")
    assert row.helpful is False and row.regenerated is True
    assert store.feedback_since(0) == (3, second + 1)
    assert store.feedback_since(second + 1) == (0, second + 1)


def test_feedback_on_unknown_interaction_raises_and_writes_nothing(store: Store) -> None:
    with pytest.raises(UnknownInteractionError, match="no interaction"):
        store.add_feedback("nope", True)
    assert store.feedback_since(0) == (0, 0)
    with pytest.raises(ValueError, match="kind"):
        store.add_feedback("nope", True, kind="sideways")


def test_imported_rating_becomes_a_feedback_event(store: Store) -> None:
    store.insert_interactions([_row(1, helpful=True), _row(2)])
    assert store.feedback_since(0)[0] == 1


def test_failed_transaction_leaves_earlier_rows_intact(store: Store) -> None:
    store.insert_interactions([_row(1)])
    with pytest.raises(RuntimeError):
        with store.write() as s:
            s.execute(text("delete from interactions"))
            raise RuntimeError("boom")
    assert store.count_interactions() == 1


def test_deployments_are_append_only_latest_wins(store: Store) -> None:
    assert store.current_deployment() is None
    store.add_deployment("a", actor="t", reason="first")
    store.add_deployment(None, actor="t", reason="back to base")
    assert store.current_deployment().adapter_id is None
    assert [d.reason for d in store.deployment_history()] == ["first", "back to base"]


def test_meta_set_once_keeps_the_first_value(store: Store) -> None:
    assert store.set_meta_once("k", "v1") == "v1"
    assert store.set_meta_once("k", "v2") == "v1"


def test_delete_user_removes_rows_and_feedback(store: Store) -> None:
    store.insert_interactions([_row(1, user_hash="u1", helpful=True), _row(2, user_hash="u2")])
    assert store.delete_user("u1") == 1
    assert store.count_interactions() == 1
    assert store.feedback_since(0)[0] == 0


def test_sixteen_threads_writing_lose_nothing(store: Store) -> None:
    per_thread, threads = 25, 16
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(per_thread):
                key = t * 1000 + i
                store.insert_interactions([_row(key)])
                store.add_feedback(f"t-{key}", i % 2 == 0)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for th in pool:
        th.start()
    for th in pool:
        th.join()
    assert errors == []
    assert store.count_interactions() == per_thread * threads
    assert store.feedback_since(0)[0] == per_thread * threads
