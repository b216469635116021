"""Polars frames read from the store: curation's interactions and monitoring's served answers.

The SQL that reads these frames lives here, with the store, like every other query.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from sqlalchemy import (
    Integer,
    Select,
    String,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal_column,
    select,
    type_coerce,
)

from cl_assets.core.store.models import Interaction, Message
from cl_assets.core.store.store import Store

# -- column names of the interactions frame, defined once ---------------------------------------
ID = "id"
CREATED = "created_at"
USER = "user_hash"
PROMPT = "prompt"
RESPONSE = "response"
PII = "pii_types"
HELPFUL = "helpful"
REGENERATED = "regenerated"
CONTEXT = "context_id"
CONTEXT_AT = "_context_at"  # the place of the row's context message in the messages frame (null: none)
_NO_USER = "_no_user"
_NO_CONTEXT = "_no_context"

INTERACTIONS_SCHEMA: dict[str, pl.DataType] = {
    ID: pl.String(),
    CREATED: pl.Datetime("us", "UTC"),
    USER: pl.String(),
    PROMPT: pl.String(),
    RESPONSE: pl.String(),
    PII: pl.String(),  # the JSON list as text; decoded by Polars, not row by row in Python
    HELPFUL: pl.Boolean(),
    REGENERATED: pl.Boolean(),
    CONTEXT: pl.String(),
}

# -- column names of the messages frame (the conversation tree) ---------------------------------
MSG_ID = "msg_id"
MSG_PARENT = "msg_parent"  # the parent's place in the frame (-1: none)
MSG_ROLE = "msg_role"
MSG_CONTENT = "msg_content"
MSG_WEIGHT = "msg_weight"

MESSAGES_SCHEMA: dict[str, pl.DataType] = {
    MSG_ID: pl.String(),
    MSG_PARENT: pl.Int64(),
    MSG_ROLE: pl.String(),
    MSG_CONTENT: pl.String(),
    MSG_WEIGHT: pl.Int8(),
}

_SQLITE_TIME = "%Y-%m-%d %H:%M:%S%.f"  # how SQLAlchemy stores DateTime on SQLite
# Rows per Arrow batch; ADBC infers each column's type from the first. Smaller batches read
# faster (1.31-1.5 s vs 1.8 s for a million interactions at 100,000: ADBC's buffers stay in cache).
_SQLITE_BATCH_ROWS = 20_000
_ID_HASH_SEED = 5
log = logging.getLogger(__name__)


def load_interactions(store: Store, since: datetime | None = None, batch_size: int = 100_000) -> pl.LazyFrame:
    """The columns curation needs, all rows or those created strictly after `since`.

    A SQLite file is read with ADBC straight into Arrow, then Polars: no Python object per
    value (2.5x less CPU than the sqlite3 driver's rows at a million). ADBC runs in a child
    process (see `store.arrow_reader`). Other databases go through SQLAlchemy in batches.
    """
    moment = None
    if since is not None:
        # SQLite keeps UTC wall times without an offset: compare in UTC on both databases.
        moment = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
    path = _sqlite_file(store)
    if path is not None:
        return _read_sqlite_file(store, path, moment)
    sqlite = store.dialect == "sqlite"
    stmt = _interactions_query(sqlite, nullable_user=True)
    if moment is not None:
        stmt = stmt.where(Interaction.created_at > moment)
    schema = {**INTERACTIONS_SCHEMA, CREATED: pl.String()} if sqlite else INTERACTIONS_SCHEMA
    with store.engine.connect() as conn:
        # Batches keep the driver's Python rows short-lived: peak memory stays near the frame's.
        batches = list(pl.read_database(stmt, conn, iter_batches=True, batch_size=batch_size, schema_overrides=schema))
    frame = pl.concat(batches, rechunk=True) if batches else pl.DataFrame(schema=schema)
    if sqlite:
        frame = frame.with_columns(pl.col(CREATED).str.to_datetime(_SQLITE_TIME, time_zone="UTC"))
    return frame.lazy()


def _interactions_query(sqlite: bool, nullable_user: bool, prompt_from_context: bool = False) -> Select[Any]:
    # SQLAlchemy's per-row result processors cost more than the driver itself at a million rows:
    # booleans come as 0/1 and SQLite's timestamps as text, and Polars converts whole columns.
    created = type_coerce(Interaction.created_at, String) if sqlite else Interaction.created_at
    if nullable_user:
        users = [Interaction.user_hash.label(USER)]
    else:  # a flag and a never-null text (see `_read_sqlite_file`)
        never_null = func.coalesce(Interaction.user_hash, literal_column("''"))
        users = [Interaction.user_hash.is_(None).label(_NO_USER), never_null.label(USER)]
    if nullable_user:
        contexts = [Interaction.context_id.label(CONTEXT)]
    else:  # as `user_hash`: most rows of an old store have none
        never_null = func.coalesce(Interaction.context_id, literal_column("''"))
        contexts = [Interaction.context_id.is_(None).label(_NO_CONTEXT), never_null.label(CONTEXT)]
    prompt: Any = Interaction.prompt
    if prompt_from_context:  # the context's last message holds the same text (see `load_conversations`)
        prompt = case((Interaction.context_id.is_(None), Interaction.prompt), else_=literal_column("''"))
    return select(
        Interaction.id.label(ID),
        created.label(CREATED),
        *users,
        prompt.label(PROMPT),
        Interaction.response.label(RESPONSE),
        cast(Interaction.pii_types, Text).label(PII),
        type_coerce(Interaction.helpful, Integer).label(HELPFUL),
        type_coerce(Interaction.regenerated, Integer).label(REGENERATED),
        *contexts,
    )


def _interactions_sql(store: Store, moment: datetime | None, prompt_from_context: bool = False) -> tuple[str, str | None]:
    """The interactions query for ADBC, and the `since` text it binds.

    ADBC types each column by the values of its first batch and fails on a later value of
    another type; a text column that is NULL throughout the first batch would come out as an
    integer. So `user_hash` arrives as a flag plus a text that is never NULL.
    """
    dialect = store.engine.dialect
    stmt = _interactions_query(sqlite=True, nullable_user=False, prompt_from_context=prompt_from_context)
    since = None
    if moment is not None:
        stmt = stmt.where(Interaction.created_at > bindparam("since", type_=Interaction.created_at.type))
        to_text = Interaction.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        since = to_text(moment) if to_text else str(moment)  # the text SQLAlchemy binds
    return str(stmt.compile(dialect=dialect)), since


def _interactions_from_arrow(frame: pl.DataFrame, prompt_from_context: bool = False) -> pl.DataFrame:
    # Casts for an empty result, whose columns ADBC types as integers. In one chunk, so that
    # the Arrow batches go now rather than live on in a plan. `prompt_from_context`: a context
    # row's PROMPT was left out of the read ('' there, null here; `read_conversations` fills it).
    text = {name: pl.col(name).cast(pl.String) for name in (ID, CREATED, USER, PROMPT, RESPONSE, PII, CONTEXT)}
    prompt = pl.when(pl.col(_NO_CONTEXT) != 0).then(text[PROMPT]) if prompt_from_context else text[PROMPT]
    return frame.lazy().select(
        text[ID],
        text[CREATED].str.to_datetime(_SQLITE_TIME, time_zone="UTC"),
        pl.when(pl.col(_NO_USER) == 0).then(text[USER]).alias(USER),
        prompt.alias(PROMPT),
        text[RESPONSE],
        text[PII],
        pl.col(HELPFUL).cast(pl.Boolean),
        pl.col(REGENERATED).cast(pl.Boolean),
        pl.when(pl.col(_NO_CONTEXT) == 0).then(text[CONTEXT]).alias(CONTEXT),
    ).collect().rechunk()


def _read_sqlite_file(store: Store, path: Path, moment: datetime | None) -> pl.LazyFrame:
    """Read with ADBC, in a child process (see `arrow_reader` for why), in one statement."""
    from cl_assets.core.store.arrow_reader import read_queries
    from cl_assets.core.store.engine import SQLITE_BUSY_TIMEOUT_MS

    [frame] = read_queries(path, [_interactions_sql(store, moment)], busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
                           batch_rows=_SQLITE_BATCH_ROWS, convert=[_interactions_from_arrow])  # fmt: skip
    return frame.lazy()


def _sqlite_file(store: Store) -> Path | None:
    """The store's SQLite file, where ADBC can read it (not in memory, not a URI)."""
    database = store.engine.url.database if store.dialect == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return Path(database)
    return None


def load_conversations(store: Store, since: datetime | None = None) -> tuple[pl.LazyFrame, pl.DataFrame]:
    """`read_conversations`, the interactions as a LazyFrame like `load_interactions`'."""
    interactions, messages = read_conversations(store, since)
    return interactions.lazy(), messages


def read_conversations(store: Store, since: datetime | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The interactions (as `load_interactions`, plus CONTEXT_AT: their context message's place
    in the messages frame) and the messages (as `load_messages`, without MSG_ID: once the places
    are known the ids are not needed again), for curation.

    From a SQLite file both come from one ADBC child, read side by side, the messages in a
    snapshot no older than the interactions' (see `arrow_reader`). A context row's prompt is
    its context's last message (the ingestor stores one text for both), so it is read once,
    from the messages, and the row points at it: no second copy of every prompt in memory. A
    row whose context is no longer stored (erased between the two reads) is left out.
    """
    path = _sqlite_file(store)
    if path is None:
        interactions, messages = load_interactions(store, since).collect(), load_messages(store)
    else:
        from cl_assets.core.store.arrow_reader import read_queries
        from cl_assets.core.store.engine import SQLITE_BUSY_TIMEOUT_MS

        moment = None
        if since is not None:
            moment = since.replace(tzinfo=UTC) if since.tzinfo is None else since.astimezone(UTC)
        queries = [_interactions_sql(store, moment, prompt_from_context=True), (_messages_sql(store), None)]
        # The messages' parents are placed while the interactions still arrive (they take longer).
        interactions, messages = read_queries(path, queries, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
                                              batch_rows=_SQLITE_BATCH_ROWS,
                                              convert=[partial(_interactions_from_arrow, prompt_from_context=True),
                                                       _messages_columns],
                                              finish=[None, _with_parents])  # fmt: skip
    at = places(interactions[CONTEXT], messages[MSG_ID]).alias(CONTEXT_AT)
    messages = messages.drop(MSG_ID)
    missing = interactions[CONTEXT].is_not_null() & at.is_null()
    prompts = pl.select(pl.coalesce(interactions[PROMPT], messages[MSG_CONTENT].gather(at))).to_series()
    interactions = interactions.with_columns(prompts.alias(PROMPT), at)
    interactions = interactions.with_columns(_shared_answers(interactions, messages))
    if missing.any():
        log.warning("%d interactions name a context no longer stored (erased while curation read); left out",
                    missing.sum())  # fmt: skip
        interactions = interactions.filter(~missing)
    return interactions, messages


def _shared_answers(interactions: pl.DataFrame, messages: pl.DataFrame) -> pl.Series:
    """RESPONSE, each answer that the messages hold too (as the next turn's context: an
    assistant message under the row's context message, same text) taken from there, and the
    rest copied into buffers of their own, so the column as read, a second copy of most
    answers in a conversation store, can go. Texts are compared, not just their hashes.
    """
    response = interactions[RESPONSE]
    # One 64-bit key of (parent, text hash) per side: a join of one integer column; a key two
    # messages share gives a row two matches (then nothing is shared), a wrong match fails the
    # comparison of the texts (then that answer keeps its own copy).
    mix = np.uint64(0x9E3779B97F4A7C15)
    content = messages[MSG_CONTENT].hash(seed=_ID_HASH_SEED) ^ (messages[MSG_PARENT].cast(pl.UInt64, strict=False) * mix)
    answers = pl.DataFrame({"_k": content}).with_row_index("_answer").filter(messages[MSG_ROLE] == "assistant")
    asked = pl.DataFrame({"_k": response.hash(seed=_ID_HASH_SEED) ^ (interactions[CONTEXT_AT].cast(pl.UInt64) * mix)})
    found = asked.join(answers, on="_k", how="left", maintain_order="left")
    if found.height != len(response) or found["_answer"].null_count() == len(response):
        return response  # two answers share a key (left as read), or none is shared
    shared = messages[MSG_CONTENT].gather(found["_answer"])
    same = (shared == response).fill_null(False)
    # The others copied out: Arrow's cast of their views to plain strings copies just their
    # texts, back to back, so no view into the column as read is left.
    kept = ~same
    plain = pc.cast(response.filter(kept).to_arrow(compat_level=pl.CompatLevel.newest()), pa.large_string())
    own = pl.Series(plain)
    # One gather of views from both (a `when/then` of two string columns would copy every text).
    place = pl.select(pl.when(same).then(found["_answer"]).otherwise(kept.cum_sum() - 1 + messages.height)).to_series()
    return pl.concat([messages[MSG_CONTENT], own], rechunk=True).gather(place).alias(RESPONSE)  # one chunk: a gather of views


def _messages_sql(store: Store) -> str:
    stmt = select(  # NULLs as ''/-1: ADBC types a column by its first batch
        Message.id.label(MSG_ID),
        func.coalesce(Message.parent_id, literal_column("''")).label("_parent_id"),
        Message.role.label(MSG_ROLE),
        Message.content.label(MSG_CONTENT),
        func.coalesce(Message.weight, literal_column("-1")).label(MSG_WEIGHT),
    )
    return str(stmt.compile(dialect=store.engine.dialect))


def _messages_columns(raw: pl.DataFrame) -> pl.DataFrame:
    """The messages query's columns (one part of them), parents still as ids (`_parent_id`)."""
    as_text = {name: pl.col(name).cast(pl.String) for name in (MSG_ID, "_parent_id", MSG_ROLE, MSG_CONTENT)}
    frame = raw.select(
        as_text[MSG_ID],
        pl.when(as_text["_parent_id"] != "").then(as_text["_parent_id"]).alias("_parent_id"),
        as_text[MSG_ROLE],
        as_text[MSG_CONTENT],
        pl.when(pl.col(MSG_WEIGHT) >= 0).then(pl.col(MSG_WEIGHT)).cast(pl.Int8).alias(MSG_WEIGHT),
    ).rechunk()
    return frame


def _with_parents(frame: pl.DataFrame) -> pl.DataFrame:
    """MESSAGES_SCHEMA's frame: the parents' ids (`_parent_id`) become their places."""
    parents = places(frame["_parent_id"], frame[MSG_ID])
    return frame.select(MSG_ID, parents.cast(pl.Int64).fill_null(-1).alias(MSG_PARENT), MSG_ROLE, MSG_CONTENT, MSG_WEIGHT)


def places(keys: pl.Series, ids: pl.Series) -> pl.Series:
    """For each of `keys`, the place in `ids` (unique) of the same text; null where none is.

    Matched on 64-bit hashes of the texts (a join of integers, several times faster than one
    of strings), then every match is checked on the texts themselves; should a key's hash be
    shared by two ids (the join then gives it two rows) or a matched text differ, the strings
    are joined instead, so the result is always exact.
    """
    index = pl.DataFrame({"_h": ids.hash(seed=_ID_HASH_SEED)}).with_row_index("_place")
    found = pl.DataFrame({"_h": keys.hash(seed=_ID_HASH_SEED)}).join(index, on="_h", how="left", maintain_order="left")
    if found.height == len(keys):
        found = pl.select(pl.when(keys.is_not_null()).then(found["_place"])).to_series()  # a null key has no place
        matched = found.is_not_null()
        if (keys.filter(matched) == ids.gather(found.filter(matched))).all():
            return found
    index = pl.DataFrame({"_key": ids}).with_row_index("_place")
    return pl.DataFrame({"_key": keys}).join(index, on="_key", how="left", maintain_order="left")["_place"]


def load_messages(store: Store, batch_size: int = 100_000) -> pl.DataFrame:
    """Every stored context message, for curation to walk (columns: MESSAGES_SCHEMA; parents
    as places in the frame, matched by id here).

    Read like the interactions: ADBC in a child for a SQLite file, SQLAlchemy batches otherwise.
    """
    path = _sqlite_file(store)
    if path is not None:
        from cl_assets.core.store.arrow_reader import read_queries
        from cl_assets.core.store.engine import SQLITE_BUSY_TIMEOUT_MS

        [frame] = read_queries(path, [(_messages_sql(store), None)], busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
                               batch_rows=_SQLITE_BATCH_ROWS, convert=[_messages_columns], finish=[_with_parents])  # fmt: skip
        return frame
    stmt = select(
        Message.id.label(MSG_ID),
        Message.parent_id.label("_parent_id"),
        Message.role.label(MSG_ROLE),
        Message.content.label(MSG_CONTENT),
        Message.weight.label(MSG_WEIGHT),
    )
    schema = {MSG_ID: pl.String(), "_parent_id": pl.String(), MSG_ROLE: pl.String(), MSG_CONTENT: pl.String(),
              MSG_WEIGHT: pl.Int8()}  # fmt: skip
    with store.engine.connect() as conn:
        batches = list(pl.read_database(stmt, conn, iter_batches=True, batch_size=batch_size, schema_overrides=schema))
    frame = pl.concat(batches, rechunk=True) if batches else pl.DataFrame(schema=schema)
    return _with_parents(frame)


# -- monitoring ------------------------------------------------------------------------------

_SERVED_SCHEMA = {
    "created_at": pl.Datetime("us", "UTC"),
    "adapter_version": pl.String,
    "helpful": pl.Boolean,
    "regenerated": pl.Boolean,
    "latency_ms": pl.Float64,
    "ttft_ms": pl.Float64,
    "tokens_per_s": pl.Float64,
}


def load_served(store: Store) -> pl.DataFrame:
    """Every interaction with the fields monitoring needs (`adapter_version` null: the base model)."""
    columns = [getattr(Interaction, name) for name in _SERVED_SCHEMA]
    with store.read() as s:
        # Explicit types: an empty store, or early rows without timings, must not break inference.
        return pl.read_database(select(*columns), connection=s.connection(), schema_overrides=_SERVED_SCHEMA)
