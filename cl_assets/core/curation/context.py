"""Conversation contexts: each interaction's stored messages, walked and trimmed in bulk.

The store keeps every message once, linked to its parent (`store.frames.load_messages`). The
walk starts at each interaction's `context_id` and follows parent links one level at a time
for all rows together, as integer gathers over the message table: no query and no Python
loop per row, and at most `max_depth` levels. The result is a long frame of (row, depth,
message) with depth 0 the prompt's own message.

A conversation longer than the training context is trimmed from the front, whole exchanges
at a time: the system prompt and the last exchange always stay, no message is ever cut. The
budget is in characters (curation has no tokenizer): `train_max_length` tokens at
`CHARS_PER_TOKEN`, a conservative ratio for English with SmolLM2's tokenizer (~4 chars a token).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from cl_assets.core.curation.columns import CONTEXT, HELPFUL, REGENERATED, RESPONSE
from cl_assets.core.snapshot import CONTROL_TOKEN
from cl_assets.core.store.frames import (
    CONTEXT_AT,
    MESSAGES_SCHEMA,
    MSG_CONTENT,
    MSG_ID,
    MSG_PARENT,
    MSG_ROLE,
    MSG_WEIGHT,
    places,
)

ROW = "_row"  # an interaction's place in the loaded frame
DEPTH = "_depth"  # 0: the prompt's own message; 1: the one before it; ...
MSG = "_msg"  # a message's place in the messages frame
CTX_KEY = "_ctx_key"  # hash of the kept context before the prompt (null: none)
CTX_CONTROL = "_ctx_control"  # a kept context message holds a control token
BODY = "_body"  # the JSON of the messages before the answer, comma-separated (null: just the prompt)
CHARS_PER_TOKEN = 3
_HASH_SEED = 7
_ASSISTANT_MIX = 0x9E3779B97F4A7C15  # tells an assistant message from a user one with the same text


@dataclass
class Contexts:
    """The walked contexts of one loaded interactions frame."""

    messages: pl.DataFrame  # the messages frame, in MSG order
    chains: pl.DataFrame  # (ROW, DEPTH, MSG) of the kept messages, level by level (DEPTH 0 first)
    start: np.ndarray  # per ROW: MSG of its context_id (-1: none)
    trimmed: int  # conversations that lost earlier exchanges to the budget
    key: np.ndarray | None = None  # per ROW: CTX_KEY (0 where there is no earlier turn)
    control: np.ndarray | None = None  # per ROW: CTX_CONTROL
    content_hash: pl.Series | None = None  # per message: hash of its content (`_HASH_SEED`)

    @classmethod
    def empty(cls, rows: int) -> Contexts:
        schema = {ROW: pl.UInt32(), DEPTH: pl.UInt16(), MSG: pl.UInt32()}
        return cls(pl.DataFrame(schema=MESSAGES_SCHEMA), pl.DataFrame(schema=schema), np.full(rows, -1, np.int64), 0)


def walk_contexts(interactions: pl.DataFrame, messages: pl.DataFrame | None, *, max_depth: int, budget_chars: int) -> Contexts:
    """Walk every interaction's context (see the module docstring). `interactions` needs
    CONTEXT (or CONTEXT_AT, its place, as `load_conversations` gives it) and RESPONSE; ROW is
    its row index."""
    n = interactions.height
    if messages is None or messages.is_empty() or CONTEXT not in interactions.columns:
        return Contexts.empty(n)
    parents = messages[MSG_PARENT].to_numpy()
    at = interactions[CONTEXT_AT] if CONTEXT_AT in interactions.columns else places(interactions[CONTEXT], messages[MSG_ID])
    start = at.fill_null(-1).cast(pl.Int64).to_numpy()

    role = messages[MSG_ROLE]
    system = (role == "system").to_numpy()
    assistant = (role == "assistant").to_numpy()
    length = messages[MSG_CONTENT].str.len_chars().fill_null(0).cast(pl.Int64).to_numpy()
    answer = interactions[RESPONSE].str.len_chars().fill_null(0).cast(pl.Int64).to_numpy()
    # What the walk needs of a message, in one gather per level: its length, whether it is the
    # system prompt, a user message, holds a control token. The dedup key mixes the content's
    # hash (the one `BodyWriter` matches answers by) with the role.
    content_hash = messages[MSG_CONTENT].hash(seed=_HASH_SEED)
    has_control = messages[MSG_CONTENT].str.contains(CONTROL_TOKEN).fill_null(False).to_numpy()
    user = ~system & ~assistant
    info = (length << 3) | system.astype(np.int64) | (user.astype(np.int64) << 1) | (has_control.astype(np.int64) << 2)
    mixed = content_hash.to_numpy() ^ np.where(assistant, np.uint64(_ASSISTANT_MIX), np.uint64(0))
    del system, assistant, user, has_control, length

    # Level by level from the prompt upwards: each level is one gather over all rows still
    # walking, whose running values are kept aligned with them (no scatter per level).
    # `climbed` is the text above the prompt so far (system prompts counted apart, as they
    # always stay), `rolling` an FNV-style hash of the user and assistant messages above the
    # prompt, `flagged` whether one of them holds a control token; each entry keeps the values
    # as of its level, and the values at the row's cut are the kept context's.
    rows_parts, depth_parts, msg_parts, bits_parts, cum_parts, key_parts, flag_parts = [], [], [], [], [], [], []
    system_chars = np.zeros(n, dtype=np.int64)
    system_flagged = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(start >= 0)
    current = start[rows]
    climbed = np.zeros(len(rows), dtype=np.int64)
    walked_system = np.zeros(len(rows), dtype=np.int64)
    walked_system_flag = np.zeros(len(rows), dtype=bool)
    rolling = np.full(len(rows), np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    flagged = np.zeros(len(rows), dtype=bool)
    for depth in range(max_depth):
        if not len(rows):
            break
        got = info[current]
        is_sys = (got & 1).astype(bool)
        chars = got >> 3
        control = (got & 4).astype(bool)
        climbed += np.where(is_sys, 0, chars)
        walked_system += np.where(is_sys, chars, 0)
        walked_system_flag |= control & is_sys
        if depth > 0:
            rolling = np.where(is_sys, rolling, (rolling ^ mixed[current]) * np.uint64(0x100000001B3))
        flagged |= control & ~is_sys
        rows_parts.append(rows.astype(np.uint32))
        depth_parts.append(np.full(len(rows), depth, np.uint16))
        msg_parts.append(current.astype(np.uint32))
        bits_parts.append((got & 3).astype(np.uint8))
        cum_parts.append(climbed.copy())
        key_parts.append(rolling.copy())
        flag_parts.append(flagged.copy())
        current = parents[current]
        alive = current >= 0
        if depth + 1 == max_depth:
            alive[:] = False
        if not alive.all():
            ended = rows[~alive]
            system_chars[ended] = walked_system[~alive]
            system_flagged[ended] = walked_system_flag[~alive]
            rows, current, climbed, rolling, flagged = rows[alive], current[alive], climbed[alive], rolling[alive], flagged[alive]
            walked_system, walked_system_flag = walked_system[alive], walked_system_flag[alive]
    if not rows_parts:
        return Contexts(messages, Contexts.empty(n).chains, start, 0, content_hash=content_hash)
    rows_all, depth_all = np.concatenate(rows_parts), np.concatenate(depth_parts)
    msg_all, cum_all = np.concatenate(msg_parts), np.concatenate(cum_parts)
    bits = np.concatenate(bits_parts)
    del rows_parts, depth_parts, msg_parts, cum_parts, bits_parts
    is_system, is_user = (bits & 1).astype(bool), (bits & 2).astype(bool)
    fits = cum_all + system_chars[rows_all] + answer[rows_all] <= budget_chars
    # The deepest user message that still fits (the prompt itself always does) starts what is kept.
    cut = np.zeros(n, dtype=np.int64)
    candidate = ~is_system & is_user & (fits | (depth_all == 0))
    np.maximum.at(cut, rows_all[candidate], depth_all[candidate].astype(np.int64))
    row_cut = cut[rows_all]
    keep = is_system | (depth_all <= row_cut)
    lost = np.zeros(n, dtype=bool)
    lost[rows_all[~keep]] = True
    at_cut = ~is_system & (depth_all == row_cut)  # one entry per walked row
    key = np.zeros(n, dtype=np.uint64)
    key[rows_all[at_cut]] = np.concatenate(key_parts)[at_cut]
    key[cut == 0] = 0  # no earlier turn kept: the prompt and answer are the whole conversation
    control = system_flagged
    control[rows_all[at_cut]] |= np.concatenate(flag_parts)[at_cut]
    chains = pl.DataFrame({ROW: rows_all[keep], DEPTH: depth_all[keep], MSG: msg_all[keep]})  # level by level
    return Contexts(messages, chains, start, int(lost.sum()), key, control, content_hash)


def context_columns(contexts: Contexts, rows: int) -> pl.DataFrame:
    """Per ROW (all `rows` of them): CTX_KEY and CTX_CONTROL of the kept context.

    The key covers the user and assistant messages before the prompt (the prompt and answer
    have their own normalised key; the system prompt changes with the chat's settings, not
    with what was said); null where there are none."""
    out = pl.DataFrame({ROW: np.arange(rows, dtype=np.uint32)})
    if contexts.key is None or contexts.control is None:
        return out.with_columns(pl.lit(None, pl.UInt64).alias(CTX_KEY), pl.lit(False).alias(CTX_CONTROL))
    key = pl.Series(CTX_KEY, contexts.key)
    return out.with_columns(pl.when(key != 0).then(key).alias(CTX_KEY), pl.Series(CTX_CONTROL, contexts.control))


def _answer_keys(contexts: Contexts, answers: pl.DataFrame) -> pl.DataFrame:
    """(MSG of the context, hash of the answer) of the given interactions (ROW, RESPONSE)."""
    starts = pl.Series("_parent", contexts.start).gather(answers[ROW])
    return pl.DataFrame({
        "_parent": starts, "_hash": answers[RESPONSE].hash(seed=_HASH_SEED),
    }).filter(pl.col("_parent") >= 0)  # fmt: skip


@dataclass
class BodyWriter:
    """Encodes the BODY of kept rows, a slice at a time (see `body_writer`)."""

    messages: pl.DataFrame  # MSG_ROLE, MSG_CONTENT of the messages frame
    weight0: pl.Series  # per message: an assistant message not to train on
    order: np.ndarray  # MSG of the kept chain entries, grouped by ROW, each row's oldest first
    offsets: np.ndarray  # per ROW: where its entries start in `order` (one more at the end)

    def __call__(self, rows: pl.Series) -> pl.DataFrame:
        """(ROW, BODY) of those of `rows` that have a context."""
        wanted = rows.drop_nulls().cast(pl.Int64).to_numpy()
        counts = self.offsets[wanted + 1] - self.offsets[wanted]
        wanted, counts = wanted[counts > 0], counts[counts > 0]
        if not len(wanted):
            return pl.DataFrame(schema={ROW: pl.UInt32(), BODY: pl.String()})
        # The rows' ranges of `order`, one after the other: a list column's offsets.
        bounds = np.zeros(len(wanted) + 1, dtype=np.int64)
        np.cumsum(counts, out=bounds[1:])
        m = self.order[np.arange(bounds[-1]) + np.repeat(self.offsets[wanted] - bounds[:-1], counts)]
        # Each message once (a session's rows share their earlier turns, every row its system
        # prompt), then its JSON gathered for every entry: a gather of string views, no copy.
        used = np.zeros(self.messages.height, dtype=bool)
        used[m] = True
        unique = np.flatnonzero(used)
        place = np.empty(self.messages.height, dtype=np.uint32)
        place[unique] = np.arange(len(unique), dtype=np.uint32)
        texts = self.messages.select(MSG_ROLE, MSG_CONTENT).with_columns(self.weight0.alias("_w0"))[unique]
        plain = pl.struct(pl.col(MSG_ROLE).alias("role"), pl.col(MSG_CONTENT).alias("content")).struct.json_encode()
        weighted = pl.struct(pl.col(MSG_ROLE).alias("role"), pl.col(MSG_CONTENT).alias("content"),
                             pl.lit(0).alias("weight")).struct.json_encode()  # fmt: skip
        encoded = texts.select(pl.when("_w0").then(weighted).otherwise(plain)).to_series().gather(place[m])
        del texts
        # Grouped by arrow's list offsets rather than a group-by: the entries are in order already.
        values = encoded.to_arrow(compat_level=pl.CompatLevel.newest())
        listed = pl.Series(pa.LargeListArray.from_arrays(pa.array(bounds), values))
        return pl.DataFrame({ROW: wanted.astype(np.uint32), BODY: listed.list.join(",")})


def body_writer(
    contexts: Contexts, loaded: pl.DataFrame, kept_rows: pl.Series, superseded_rows: pl.Series | None = None
) -> BodyWriter:
    """What encodes the kept rows' contexts as JSON messages, oldest first.

    An earlier assistant message gets `"weight": 0` (not trained on) when it was imported so,
    when the answer it was got 👎 or was regenerated without a 👍, or when that answer is a
    line of this snapshot itself (it is learned there, in its own context, once), or when a
    newer answer to its question superseded it (`superseded_rows`, see `drop_superseded`).
    `loaded`: the whole loaded frame (ROW, RESPONSE, HELPFUL, REGENERATED);
    `kept_rows`: ROW of every new row of the snapshot.
    """
    not_trained = pl.col(HELPFUL).not_() | (pl.col(REGENERATED).fill_null(False) & pl.col(HELPFUL).is_null())
    if superseded_rows is not None and not superseded_rows.is_empty():
        not_trained = not_trained.fill_null(False) | pl.col(ROW).is_in(superseded_rows.cast(pl.UInt32).implode())
    bad = _answer_keys(contexts, loaded.filter(not_trained.fill_null(False)))
    kept = pl.DataFrame({ROW: kept_rows.drop_nulls().cast(pl.UInt32)})
    own = _answer_keys(contexts, loaded.join(kept, on=ROW, how="semi"))
    untrained = pl.concat([bad, own]).unique()
    # Per message, once: an assistant message whose (parent, content) is such an answer.
    messages = contexts.messages
    assert contexts.content_hash is not None
    assistant = messages[MSG_ROLE] == "assistant"
    known = (
        pl.DataFrame({"_parent": messages[MSG_PARENT], "_hash": contexts.content_hash})
        .with_row_index(MSG)
        .filter(assistant)
        .join(untrained, on=["_parent", "_hash"], how="semi")[MSG]
    )
    weight0 = assistant & ((messages[MSG_WEIGHT] == 0).fill_null(False) | pl.int_range(messages.height, eager=True).is_in(known.implode()))
    # The kept entries, grouped by row: chains come level by level (DEPTH ascending), so a
    # stable sort of them reversed puts each row's messages oldest first.
    chain_rows = contexts.chains[ROW].to_numpy()[::-1]
    by_row = np.argsort(chain_rows, kind="stable")
    order = contexts.chains[MSG].to_numpy()[::-1][by_row]
    offsets = np.zeros(len(contexts.start) + 1, dtype=np.int64)
    np.cumsum(np.bincount(chain_rows, minlength=len(contexts.start)), out=offsets[1:])
    return BodyWriter(messages.select(MSG_ROLE, MSG_CONTENT), weight0, order, offsets)


def bodies(contexts: Contexts, loaded: pl.DataFrame, kept_rows: pl.Series) -> pl.DataFrame:
    """(ROW, BODY) for all `kept_rows` at once (see `body_writer`)."""
    return body_writer(contexts, loaded, kept_rows)(kept_rows)


__all__ = ["BODY", "CHARS_PER_TOKEN", "CTX_CONTROL", "CTX_KEY", "DEPTH", "MSG", "ROW", "BodyWriter", "Contexts",
           "bodies", "body_writer", "context_columns", "walk_contexts"]  # fmt: skip
