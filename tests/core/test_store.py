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
    assert store.add_feedback(_row(1, user_hash="u1")["id"], False) > 0
    assert store.delete_user("u1") == (1, 2, 0)  # the row's rating and the later one, in one transaction
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


def test_batch_insert_stores_what_the_orm_would(store: Store) -> None:
    """The batch path converts values itself (SQLite) or through Core (PostgreSQL): every
    column must read back, raw, exactly as an ORM insert of the same values stores it."""
    from cl_assets.core.store.models import Interaction

    fields = {
        "created_at": datetime(2026, 11, 1, 9, 30, 15, 123456, tzinfo=UTC),
        "session_id": "s-1",
        "user_hash": "ab" * 32,
        "prompt": "é [EMAIL] \u2028 quote\" back\\slash",
        "response": "answer",
        "pii_types": ["EMAIL", "PHONE"],
        "source": "import",
        "model_version": "m",
        "adapter_version": "a",
        "latency_ms": 12.5,
        "ttft_ms": 3,
        "prompt_tokens": 7,
        "completion_tokens": 9,
        "tokens_per_s": 30.25,
        "helpful": False,
        "regenerated": False,
        "feedback_at": datetime(2026, 11, 1, 9, 31, tzinfo=UTC),
        "ingested_at": datetime(2026, 11, 2, tzinfo=UTC),
    }
    with store.write() as s:
        s.add(Interaction(id="orm", **fields))
    assert store.insert_interactions([{"id": "batch", **fields}]) == ["batch"]
    with store.read() as s:
        raw = {r[0]: r[1:] for r in s.execute(text("select * from interactions")).all()}
    assert raw["orm"] == raw["batch"]


def test_batch_rows_may_differ_in_keys_and_get_model_defaults(store: Store) -> None:
    rows = [
        _row(1, user_hash="u1", helpful=True, feedback_at=datetime(2026, 11, 3, tzinfo=UTC)),
        {"id": "t-2", "prompt": "p", "response": "r", "pii_types": None, "source": None},  # defaults fill in
        _row(3, session_id="s", latency_ms=1.0),
        _row(1, prompt="the same id again: the first row wins"),
    ]
    assert store.insert_interactions(rows) == ["t-1", "t-2", "t-3"]
    first, second = store.get_interaction("t-1"), store.get_interaction("t-2")
    assert first.prompt == "question 1" and first.user_hash == "u1" and first.helpful is True
    assert second.pii_types == [] and second.source == "chat" and second.regenerated is False
    assert second.created_at is not None and second.ingested_at is not None
    assert store.feedback_since(0)[0] == 1
    with pytest.raises(ValueError, match="not columns of interactions"):
        store.insert_interactions([_row(4, colour="blue")])
    assert store.count_interactions() == 3


def test_a_batch_is_all_or_nothing_in_a_few_statements(store: Store) -> None:
    from sqlalchemy import event

    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        statements.append(statement.split()[0].upper())

    event.listen(store.engine, "before_cursor_execute", count)
    rows = [_row(i, helpful=True if i % 2 == 0 else None) for i in range(2_500)]
    assert len(store.insert_interactions(rows)) == 2_500
    event.remove(store.engine, "before_cursor_execute", count)
    # Per 1,000 rows: one query for known ids, one insert of interactions, one of feedback.
    assert statements.count("SELECT") == 3 and statements.count("INSERT") <= 6 + 3, statements
    assert store.feedback_since(0)[0] == 1_250

    bad = [_row(i) for i in range(5_000, 6_500)] + [_row(6_500, prompt=None)]  # NOT NULL, in the second chunk
    with pytest.raises(Exception, match="(?i)null"):
        store.insert_interactions(bad)
    assert store.count_interactions() == 2_500 and store.get_interaction("t-5000") is None


def _chain(user_hash: str | None, *turns: tuple[str, str]) -> list[dict]:
    """Messages of a context, parents first, as the ingestor builds them."""
    from cl_assets.core.conversation import message_id

    messages, parent = [], None
    for role, content in turns:
        mid = message_id(parent, user_hash, role, content)
        messages.append({"id": mid, "parent_id": parent, "role": role, "content": content,
                         "pii_types": [], "user_hash": user_hash, "weight": None})  # fmt: skip
        parent = mid
    return messages


def test_contexts_are_a_tree_each_message_stored_once(store: Store) -> None:
    system = ("system", "You are the shop's assistant.")
    first = _chain("u1", system, ("user", "What is the free shipping threshold?"))
    second = _chain("u1", system, ("user", "What is the free shipping threshold?"),
                    ("assistant", "Orders over $50 ship free."), ("user", "And for Canada?"))  # fmt: skip
    retry = _chain("u1", system, ("user", "What is the free shipping threshold?"),
                   ("assistant", "Shipping is free above $50."), ("user", "And for Canada?"))  # fmt: skip
    store.insert_interactions([_row(1, user_hash="u1", prompt="What is the free shipping threshold?",
                                    response="Orders over $50 ship free.", context_id=first[-1]["id"])], first)  # fmt: skip
    store.insert_interactions([_row(2, user_hash="u1", prompt="And for Canada?", response="Canada: over $80.",
                                    context_id=second[-1]["id"]),
                               _row(3, user_hash="u1", prompt="And for Canada?", response="C$100 for Canada.",
                                    context_id=retry[-1]["id"])], second + retry)  # fmt: skip
    # system + question shared by all three; two answers branch; each branch's follow-up: 6, not 2 + 4 + 4.
    assert store.count_messages() == 6
    assert store.conversation("t-2") == [
        {"role": "system", "content": "You are the shop's assistant."},
        {"role": "user", "content": "What is the free shipping threshold?"},
        {"role": "assistant", "content": "Orders over $50 ship free."},
        {"role": "user", "content": "And for Canada?"},
        {"role": "assistant", "content": "Canada: over $80."},
    ]
    assert [m["content"] for m in store.conversation("t-3")][2] == "Shipping is free above $50."
    # A row without context reads as a single-turn conversation.
    store.insert_interactions([_row(4)])
    assert store.conversation("t-4") == [{"role": "user", "content": "question 4"}, {"role": "assistant", "content": "answer 4"}]


def test_latest_answer_to_a_context_is_one_lookup_by_its_id(store: Store) -> None:
    """A resend of the same conversation finds the answer it replaces; another user's or
    another context's answers are not found."""
    turns = (("system", "Be brief."), ("user", "Hi, what are your hours?"))
    mine, theirs = _chain("u1", *turns), _chain("u2", *turns)
    early, late = datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 11, 2, tzinfo=UTC)
    store.insert_interactions([_row(1, user_hash="u1", context_id=mine[-1]["id"], created_at=early),
                               _row(2, user_hash="u1", context_id=mine[-1]["id"], created_at=late),
                               _row(3, user_hash="u2", context_id=theirs[-1]["id"], created_at=late)], mine + theirs)  # fmt: skip
    assert store.latest_answer_to(mine[-1]["id"]) == "t-2"
    assert store.latest_answer_to(mine[-1]["id"], excluding="t-2") == "t-1"
    assert store.latest_answer_to(theirs[-1]["id"], excluding="t-3") is None
    assert store.latest_answer_to("0" * 32) is None


def test_erasing_a_user_removes_their_messages_only(store: Store) -> None:
    turns = (("system", "Be brief."), ("user", "Hi, what are your hours?"))
    mine, theirs = _chain("u1", *turns), _chain("u2", *turns)
    assert mine[0]["id"] != theirs[0]["id"]  # the same text, kept apart per user
    store.insert_interactions([_row(1, user_hash="u1", context_id=mine[-1]["id"]),
                               _row(2, user_hash="u2", context_id=theirs[-1]["id"])], mine + theirs)  # fmt: skip
    assert store.delete_user("u1") == (1, 0, 2)
    assert store.count_messages() == 2
    assert [m["role"] for m in store.conversation("t-2")] == ["system", "user", "assistant"]


def test_upgrade_from_0001_keeps_rows_readable(any_db_settings: Settings) -> None:
    """A store created before conversations existed: its rows survive the upgrade and read
    as single-turn conversations; new turns with context can be added next to them."""
    from alembic import command

    from cl_assets.core.store.engine import _alembic_config, make_engine

    engine = make_engine(any_db_settings.db_url)
    cfg = _alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
    with engine.begin() as conn:
        conn.execute(text(
            "insert into interactions (id, created_at, ingested_at, prompt, response, pii_types, source, regenerated, helpful)"
            " values ('old-1', '2026-11-01 10:00:00', '2026-11-01 10:00:00', 'Old question?', 'Old answer.', '[]', 'chat',"
            " false, true)"
        ))  # fmt: skip
    assert current_revision(engine) == "0001"
    engine.dispose()

    store = Store(any_db_settings.db_url)
    try:
        assert current_revision(store.engine) == head_revision()
        old = store.get_interaction("old-1")
        assert old is not None and old.prompt == "Old question?" and old.helpful is True and old.context_id is None
        assert store.conversation("old-1") == [
            {"role": "user", "content": "Old question?"},
            {"role": "assistant", "content": "Old answer."},
        ]
        chain = _chain(None, ("user", "New question?"))
        store.insert_interactions([_row(9, context_id=chain[-1]["id"])], chain)
        assert store.count_interactions() == 2 and store.count_messages() == 1
    finally:
        store.close()
