"""Curation's fast context paths agree with the straightforward ones: every line's context
walked message by message from the store, duplicates judged on every row's fingerprint, ids
matched as strings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
from sqlalchemy import select

from cl_assets.core import curation
from cl_assets.core.curation import filters
from cl_assets.core.curation.context import CHARS_PER_TOKEN, CTX_KEY, ROW
from cl_assets.core.curation.writing import chatml_lines
from cl_assets.core.ingest import Ingestor
from cl_assets.core.store import Store
from cl_assets.core.store.frames import load_conversations, places
from cl_assets.core.store.models import Interaction, Message
from cl_assets.settings import Settings

T0 = datetime(2026, 11, 1, tzinfo=UTC)
SYSTEM = "You are the support assistant. Answer briefly."


def _fill(settings: Settings, store: Store) -> None:
    """Sessions of several turns (each logged with its whole history), a retried answer (a
    branch), rated-down and regenerated earlier turns, an imported weight-0 answer, the same
    last exchange after different and after equal contexts, and long turns that get trimmed."""
    ingestor = Ingestor(settings, store)
    minute = iter(range(10_000))

    def turn(history: list[dict], prompt: str, response: str, user: str, helpful: bool | None = None) -> str:
        done = ingestor.ingest_interaction(prompt=prompt, response=response, user_id=user, helpful=helpful,
                                           context=history or None, timestamp=T0 + timedelta(minutes=next(minute)))  # fmt: skip
        return done.id

    for s in range(12):
        user = f"user-{s % 4}"
        history: list[dict] = [{"role": "system", "content": SYSTEM}]
        for t in range(4 if s % 3 else 6):
            prompt = f"Session {s} question {t}: where does parcel {s * 10 + t} go next?" + (" Very long." * 8 if t == 3 else "")
            answer = f"Parcel {s * 10 + t} goes to depot {t} and then to the customer in town {s}."
            rating = [True, None, False][(s + t) % 3]
            row = turn(history, prompt, answer, user, rating)
            if (s + t) % 5 == 0:
                ingestor.record_feedback(row, None, kind="regenerate")
                retry = f"Retried: parcel {s * 10 + t} leaves from depot {t}."
                turn(history, prompt, retry, user, True)  # a sibling answer
            history = [*history, {"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]
    # The same last exchange after two different contexts, and twice after the same one.
    for ctx in ("Do you ship to Oslo?", "Do you ship to Lima?", "Do you ship to Lima?"):
        history = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ctx},
                   {"role": "assistant", "content": "Yes, we ship there every week.", "weight": 0}]  # fmt: skip
        turn(history, "How long does it take?", "About five working days door to door.", "user-9", True)
    turn([], "A single turn without context?", "Yes, a flat row like before conversations.", "user-8", True)


def _reference_line(store: Store, row: Interaction, untrained: set[tuple[str | None, str]], budget: int) -> str:
    """The line written the straightforward way: the context walked from the store, trimmed."""
    if row.context_id is None:
        pair = [{"role": "user", "content": row.prompt}, {"role": "assistant", "content": row.response}]
        return json.dumps({"messages": pair}, ensure_ascii=False, separators=(",", ":"))
    with store.read() as session:
        chain = []
        current = row.context_id
        while current is not None:
            message = session.scalars(select(Message).where(Message.id == current)).one()
            chain.append(message)
            current = message.parent_id
    chain.reverse()  # oldest first
    system = [m for m in chain if m.role == "system"]
    turns = [m for m in chain if m.role != "system"]
    system_chars = sum(len(m.content) for m in system)
    start = len(turns) - 1  # the prompt always stays
    for i in range(len(turns) - 1, -1, -1):
        if turns[i].role == "user" and sum(len(m.content) for m in turns[i:]) + system_chars + len(row.response) <= budget:
            start = i
    kept = system + turns[start:]

    def encoded(m: Message) -> dict:
        out = {"role": m.role, "content": m.content}
        if m.role == "assistant" and (m.weight == 0 or (m.parent_id, m.content) in untrained):
            out["weight"] = 0
        return out

    messages = [encoded(m) for m in kept] + [{"role": "assistant", "content": row.response}]
    return json.dumps({"messages": messages}, ensure_ascii=False, separators=(",", ":"))


def test_context_lines_equal_the_walk_message_by_message(settings: Settings) -> None:
    settings = settings.model_copy(update={"train_max_length": 60, "max_rows_per_user": 1000})
    store = Store.from_settings(settings)
    _fill(settings, store)
    interactions, messages = load_conversations(store)
    rows, counts, write_bodies = filters.curate_rows(interactions, settings, None, messages, None)
    assert counts["context_trimmed"] > 0 and counts["with_context"] > 0
    lines = chatml_lines(filters.with_bodies(rows, write_bodies), settings.train_mode).to_list()

    loaded = interactions.collect().with_row_index(ROW)
    kept_ids = set(loaded.join(rows.select(ROW), on=ROW, how="semi")["id"])
    stored = {r.id: r for r in store.iter_interactions()}
    # Answers not to train on as context: rated down, regenerated without a 👍, or a line of their own.
    untrained = {
        (r.context_id, r.response) for r in stored.values()
        if r.context_id and (r.helpful is False or (r.regenerated and r.helpful is None) or r.id in kept_ids)
    }  # fmt: skip
    by_row = dict(zip(loaded[ROW].to_list(), loaded["id"].to_list(), strict=True))
    budget = settings.train_max_length * CHARS_PER_TOKEN
    expected = [_reference_line(store, stored[by_row[r]], untrained, budget) for r in rows[ROW].to_list()]
    assert lines == expected
    store.close()


def test_duplicates_judged_only_among_rows_with_the_same_context(settings: Settings) -> None:
    """Lonely contexts skip the fingerprints; the kept rows equal judging every row."""
    store = Store.from_settings(settings)
    _fill(settings, store)
    interactions, messages = load_conversations(store)
    rows, counts, _ = filters.curate_rows(interactions, settings.model_copy(update={"max_rows_per_user": 1000}), None,
                                          messages, None)  # fmt: skip
    # The straightforward way: every row fingerprinted, its context folded into key and MinHash.
    current = interactions.collect().with_row_index(ROW)
    contexts = curation.context.walk_contexts(current, messages, max_depth=settings.max_conversation_messages,
                                              budget_chars=settings.train_max_length * CHARS_PER_TOKEN)  # fmt: skip
    current = current.hstack(curation.context.context_columns(contexts, current.height).drop(ROW).get_columns())
    current = current.lazy().pipe(curation.rank).collect()
    for name, step in filters.curation_steps(settings)[:5]:
        current = current.lazy().pipe(step).collect()
    keys, signatures = curation.fingerprints(current[curation.PROMPT], current[curation.RESPONSE])
    keyed = current.with_columns(keys).with_columns(
        pl.when(pl.col(CTX_KEY).is_null()).then(pl.col(curation.KEY))
        .otherwise(pl.struct(curation.KEY, CTX_KEY).hash(seed=0)).alias(curation.KEY)
    )  # fmt: skip
    signatures ^= (current[CTX_KEY].fill_null(0).to_numpy() & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None]
    best = keyed.select(pl.col(curation.RANK) == pl.col(curation.RANK).min().over(curation.KEY)).to_series().to_numpy()
    survivors = keyed.filter(pl.Series(best))
    near = curation.duplicate_mask(signatures[best], settings.near_dup_threshold, survivors[curation.RANK].to_numpy())
    expected = set(survivors.filter(pl.Series(~near))[ROW].to_list())
    assert counts["near_dedup"] == len(expected)
    assert set(rows[ROW].to_list()) == expected
    # The same last exchange: kept after Oslo and after Lima, once for the two equal Lima contexts.
    answers = rows.filter(pl.col(curation.RESPONSE) == "About five working days door to door.")
    assert answers.height == 2
    store.close()


def test_places_match_ids_exactly() -> None:
    ids = pl.Series(["a1", "b2", "c3", "d4"])
    keys = pl.Series(["c3", None, "zz", "a1", "a1"])
    assert places(keys, ids).to_list() == [2, None, None, 0, 0]
    # Should two ids share a hash, the strings are joined instead: the same answer.
    many = pl.Series([f"{i:032x}" for i in range(50_000)])
    probe = pl.Series([f"{i:032x}" for i in range(0, 100_000, 7)])
    expected = [i if i < 50_000 else None for i in range(0, 100_000, 7)]
    assert places(probe, many).to_list() == expected


def test_loaded_prompts_and_answers_are_the_stored_ones(any_db_settings: Settings) -> None:
    """The load reads a context row's prompt from its context message and shares each answer
    with the next turn's copy of it; every value still equals what the store holds, an answer
    is never taken from another branch, and CONTEXT_AT names the row's own context message."""
    from cl_assets.core.store.frames import CONTEXT_AT, MSG_ID, load_messages

    settings = any_db_settings
    store = Store.from_settings(settings)
    _fill(settings, store)
    ingestor = Ingestor(settings, store)
    # The same answer text under another context than the one it was given in: not shared.
    history = [{"role": "user", "content": "Session 0 question 0: where does parcel 0 go next?"},
               {"role": "assistant", "content": "Parcel 1 goes to depot 1 and then to the customer in town 0."}]  # fmt: skip
    ingestor.ingest_interaction(prompt="And after that?", response="Then it is delivered.", user_id="user-0",
                                context=history, timestamp=T0 + timedelta(days=1))  # fmt: skip
    interactions, _ = load_conversations(store)
    loaded = interactions.collect()
    ids = load_messages(store)[MSG_ID]  # in the same order (rowid) as curation's messages
    stored = {r.id: r for r in store.iter_interactions()}
    assert loaded.height == len(stored)
    for row in loaded.iter_rows(named=True):
        assert (row[curation.PROMPT], row[curation.RESPONSE]) == (stored[row["id"]].prompt, stored[row["id"]].response)
        if row[CONTEXT_AT] is None:
            assert stored[row["id"]].context_id is None
        else:
            assert ids[row[CONTEXT_AT]] == stored[row["id"]].context_id
    store.close()


def test_a_row_whose_context_is_gone_is_left_out(settings: Settings, caplog) -> None:
    """Erasure between the two reads would leave a row naming a context no longer stored: it
    is left out, never curated as a turn without its conversation."""
    from sqlalchemy import delete

    store = Store.from_settings(settings)
    _fill(settings, store)
    with store.read() as session:  # a prompt message no other message hangs from: the last turn's
        parents = set(session.scalars(select(Message.parent_id)).all())
        leaf = session.scalars(select(Interaction).where(Interaction.context_id.is_not(None))).all()
        victim = next(r for r in leaf if r.context_id not in parents)
    with store.write() as session:
        session.execute(delete(Message).where(Message.id == victim.context_id))
    interactions, _ = load_conversations(store)
    ids = interactions.collect()["id"].to_list()
    orphans = {r.id for r in store.iter_interactions() if r.context_id == victim.context_id}  # a retry shares it
    assert victim.id in orphans and not orphans & set(ids)
    assert len(ids) == sum(1 for _ in store.iter_interactions()) - len(orphans)
    assert "no longer stored" in caplog.text
    store.close()
