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

from cl_assets.core.curation.columns import CONTEXT, HELPFUL, REGENERATED, RESPONSE
from cl_assets.core.snapshot import CONTROL_TOKEN
from cl_assets.core.store.frames import (
    MESSAGES_SCHEMA,
    MSG_CONTENT,
    MSG_ID,
    MSG_PARENT,
    MSG_ROLE,
    MSG_WEIGHT,
)

ROW = "_row"  # an interaction's place in the loaded frame
DEPTH = "_depth"  # 0: the prompt's own message; 1: the one before it; ...
MSG = "_msg"  # a message's place in the messages frame
CTX_KEY = "_ctx_key"  # hash of the kept context before the prompt (null: none)
CTX_CONTROL = "_ctx_control"  # a kept context message holds a control token
BODY = "_body"  # the JSON of the messages before the answer, comma-separated (null: just the prompt)
CHARS_PER_TOKEN = 3
_HASH_SEED = 7


@dataclass
class Contexts:
    """The walked contexts of one loaded interactions frame."""

    messages: pl.DataFrame  # the messages frame, in MSG order
    chains: pl.DataFrame  # (ROW, DEPTH, MSG) of the kept messages, level by level (DEPTH 0 first)
    start: np.ndarray  # per ROW: MSG of its context_id (-1: none)
    trimmed: int  # conversations that lost earlier exchanges to the budget
    key: np.ndarray | None = None  # per ROW: CTX_KEY (0 where there is no earlier turn)
    control: np.ndarray | None = None  # per ROW: CTX_CONTROL

    @classmethod
    def empty(cls, rows: int) -> Contexts:
        schema = {ROW: pl.UInt32(), DEPTH: pl.UInt16(), MSG: pl.UInt32()}
        return cls(pl.DataFrame(schema=MESSAGES_SCHEMA), pl.DataFrame(schema=schema), np.full(rows, -1, np.int64), 0)


def walk_contexts(interactions: pl.DataFrame, messages: pl.DataFrame | None, *, max_depth: int, budget_chars: int) -> Contexts:
    """Walk every interaction's context (see the module docstring). `interactions` needs
    CONTEXT and RESPONSE; ROW is its row index."""
    n = interactions.height
    if messages is None or messages.is_empty() or CONTEXT not in interactions.columns:
        return Contexts.empty(n)
    parents = messages[MSG_PARENT].to_numpy()
    index = messages.select(pl.col(MSG_ID).alias(CONTEXT)).with_row_index(MSG)
    start = interactions.select(CONTEXT).join(index, on=CONTEXT, how="left", maintain_order="left")[MSG]
    start = start.fill_null(-1).cast(pl.Int64).to_numpy()

    system = (messages[MSG_ROLE] == "system").to_numpy()
    user = (messages[MSG_ROLE] == "user").to_numpy()
    length = messages[MSG_CONTENT].str.len_chars().fill_null(0).cast(pl.Int64).to_numpy()
    answer = interactions[RESPONSE].str.len_chars().fill_null(0).cast(pl.Int64).to_numpy()
    # What the dedup key and the control-token check need of each message, once per message.
    content_hash = messages.select(pl.struct(MSG_ROLE, MSG_CONTENT).hash(seed=_HASH_SEED)).to_series().to_numpy()
    has_control = messages[MSG_CONTENT].str.contains(CONTROL_TOKEN).fill_null(False).to_numpy()

    # Level by level from the prompt upwards: each level is one gather over all rows still
    # walking. `climbed` is the text above the prompt so far (system prompts counted apart,
    # as they always stay), `rolling` an FNV-style hash of the user and assistant messages
    # above the prompt, `flagged` whether one of them holds a control token: per level, as
    # arrays, never per row; each entry keeps the values as of its level, and the values at
    # the row's cut are the kept context's.
    rows_parts, depth_parts, msg_parts, cum_parts, key_parts, flag_parts = [], [], [], [], [], []
    climbed = np.zeros(n, dtype=np.int64)
    system_chars = np.zeros(n, dtype=np.int64)
    rolling = np.full(n, np.uint64(0xCBF29CE484222325), dtype=np.uint64)
    flagged = np.zeros(n, dtype=bool)
    system_flagged = np.zeros(n, dtype=bool)
    rows = np.flatnonzero(start >= 0)
    current = start[rows]
    for depth in range(max_depth):
        if not len(rows):
            break
        is_sys = system[current]
        climbed[rows] += np.where(is_sys, 0, length[current])
        system_chars[rows] += np.where(is_sys, length[current], 0)
        if depth > 0:
            mixed = (rolling[rows] ^ content_hash[current]) * np.uint64(0x100000001B3)
            rolling[rows] = np.where(is_sys, rolling[rows], mixed)
        flagged[rows] |= has_control[current] & ~is_sys
        system_flagged[rows] |= has_control[current] & is_sys
        rows_parts.append(rows.astype(np.uint32))
        depth_parts.append(np.full(len(rows), depth, np.uint16))
        msg_parts.append(current.astype(np.uint32))
        cum_parts.append(climbed[rows].copy())
        key_parts.append(rolling[rows].copy())
        flag_parts.append(flagged[rows].copy())
        current = parents[current]
        alive = current >= 0
        rows, current = rows[alive], current[alive]
    if not rows_parts:
        return Contexts(messages, Contexts.empty(n).chains, start, 0)
    rows_all, depth_all = np.concatenate(rows_parts), np.concatenate(depth_parts)
    msg_all, cum_all = np.concatenate(msg_parts), np.concatenate(cum_parts)
    is_system = system[msg_all]
    fits = cum_all + system_chars[rows_all] + answer[rows_all] <= budget_chars
    # The deepest user message that still fits (the prompt itself always does) starts what is kept.
    cut = np.zeros(n, dtype=np.int64)
    candidate = ~is_system & user[msg_all] & (fits | (depth_all == 0))
    np.maximum.at(cut, rows_all[candidate], depth_all[candidate].astype(np.int64))
    keep = is_system | (depth_all <= cut[rows_all])
    trimmed = len(np.unique(rows_all[~keep]))
    at_cut = ~is_system & (depth_all == cut[rows_all])  # one entry per walked row
    key = np.zeros(n, dtype=np.uint64)
    key[rows_all[at_cut]] = np.concatenate(key_parts)[at_cut]
    key[cut == 0] = 0  # no earlier turn kept: the prompt and answer are the whole conversation
    control = system_flagged.copy()
    control[rows_all[at_cut]] |= np.concatenate(flag_parts)[at_cut]
    chains = pl.DataFrame({ROW: rows_all[keep], DEPTH: depth_all[keep], MSG: msg_all[keep]})  # level by level
    return Contexts(messages, chains, start, int(trimmed), key, control)


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

    contexts: Contexts
    untrained: pl.DataFrame  # (_parent, _hash) of answers that must not be trained on
    content_hash: pl.Series  # per message

    def __call__(self, rows: pl.Series) -> pl.DataFrame:
        """(ROW, BODY) of those of `rows` that have a context."""
        chains = self.contexts.chains.join(pl.DataFrame({ROW: rows.drop_nulls().cast(pl.UInt32)}), on=ROW, how="semi")
        if chains.is_empty():
            return pl.DataFrame(schema={ROW: pl.UInt32(), BODY: pl.String()})
        messages = self.contexts.messages
        # Flags first, on integer and hash columns only; the text is gathered once, to encode it.
        m = chains[MSG]
        keyed = pl.DataFrame({"_parent": messages[MSG_PARENT].gather(m), "_hash": self.content_hash.gather(m)}).join(
            self.untrained.with_columns(_known=pl.lit(True)), on=["_parent", "_hash"], how="left", maintain_order="left"
        )
        role = messages[MSG_ROLE].gather(m)
        imported0 = (messages[MSG_WEIGHT].gather(m) == 0).fill_null(False)
        weight0 = (role == "assistant") & (imported0 | keyed["_known"].fill_null(False))
        texts = pl.DataFrame({"role": role, "content": messages[MSG_CONTENT].gather(m), "_w0": weight0})
        plain = pl.struct("role", "content").struct.json_encode()
        weighted = pl.struct("role", "content", pl.lit(0).alias("weight")).struct.json_encode()
        encoded = texts.select(pl.when("_w0").then(weighted).otherwise(plain).alias("_json"))["_json"]
        del texts
        # Chains come level by level, so each row's messages are in DEPTH order: reversed, oldest first.
        return (
            pl.DataFrame({ROW: chains[ROW], "_json": encoded})
            .group_by(ROW, maintain_order=True)
            .agg(pl.col("_json").reverse().str.join(",").alias(BODY))
        )


def body_writer(
    contexts: Contexts, loaded: pl.DataFrame, kept_rows: pl.Series, superseded_rows: pl.Series | None = None
) -> BodyWriter:
    """What encodes the kept rows' contexts as JSON messages, oldest first.

    An earlier assistant message gets `"weight": 0` (not trained on) when it was imported so,
    when the answer it was got 👎 or was regenerated without a 👍, or when that answer is a
    line of this snapshot itself (it is learned there, in its own context, once), or when a
    newer answer to its question superseded it (`superseded_rows`, see `drop_superseded`).
    `loaded`: the whole loaded frame (ROW, CONTEXT, RESPONSE, HELPFUL, REGENERATED);
    `kept_rows`: ROW of every new row of the snapshot.
    """
    not_trained = pl.col(HELPFUL).not_() | (pl.col(REGENERATED).fill_null(False) & pl.col(HELPFUL).is_null())
    if superseded_rows is not None and not superseded_rows.is_empty():
        not_trained = not_trained.fill_null(False) | pl.col(ROW).is_in(superseded_rows.cast(pl.UInt32).implode())
    bad = _answer_keys(contexts, loaded.filter(not_trained.fill_null(False)))
    kept = pl.DataFrame({ROW: kept_rows.drop_nulls().cast(pl.UInt32)})
    own = _answer_keys(contexts, loaded.join(kept, on=ROW, how="semi"))
    untrained = pl.concat([bad, own]).unique()
    return BodyWriter(contexts, untrained, contexts.messages[MSG_CONTENT].hash(seed=_HASH_SEED))


def bodies(contexts: Contexts, loaded: pl.DataFrame, kept_rows: pl.Series) -> pl.DataFrame:
    """(ROW, BODY) for all `kept_rows` at once (see `body_writer`)."""
    return body_writer(contexts, loaded, kept_rows)(kept_rows)


__all__ = ["BODY", "CHARS_PER_TOKEN", "CTX_CONTROL", "CTX_KEY", "DEPTH", "MSG", "ROW", "BodyWriter", "Contexts",
           "bodies", "body_writer", "context_columns", "walk_contexts"]  # fmt: skip
