"""Replay: rows of earlier untainted snapshots mixed into a new one, against forgetting."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from cl_assets.core.curation.columns import KEY, LABEL, PROMPT, REPLAY_FROM, RESPONSE
from cl_assets.core.curation.context import BODY
from cl_assets.core.curation.text import text_key
from cl_assets.core.snapshot import file_sha256
from cl_assets.core.store import Store


class ReplaySourceError(RuntimeError):
    """An earlier snapshot chosen for replay is missing or no longer matches its hash."""


def _empty_pool(train_mode: str) -> pl.LazyFrame:
    schema: dict[str, pl.DataType] = {
        PROMPT: pl.String(), RESPONSE: pl.String(), BODY: pl.String(), KEY: pl.UInt64(), REPLAY_FROM: pl.String(),
    }  # fmt: skip
    if train_mode == "kto":
        schema[LABEL] = pl.Boolean()
    return pl.LazyFrame(schema=schema)


_LINE_SCHEMA = {
    "messages": pl.List(pl.Struct({"role": pl.String(), "content": pl.String(), "weight": pl.Int64()})),
    "label": pl.Boolean(),
}


def _last(role: str) -> pl.Expr:
    msg = pl.element()
    return pl.col("messages").list.eval(msg.filter(msg.struct.field("role") == role).struct.field("content")).list.last()


def _body() -> pl.Expr:
    """The line's messages before its last one, encoded again as the curated line had them."""
    before = pl.col("messages").list.head(pl.col("messages").list.len() - 1)
    encoded = before.list.eval(pl.element().struct.json_encode()).list.join(",")
    return encoded.str.replace_all(',"weight":null', "", literal=True)


def replay_pool(store: Store, before_id: str, train_mode: str) -> tuple[pl.LazyFrame, dict[str, list[str]]]:
    """Rows of earlier untainted snapshots, one per text, and each source's user hashes.

    A replayed row is its whole line: the last user/assistant pair (what duplicates are judged
    on) and the messages before the answer (BODY). In SFT mode lines labelled
    false (from KTO snapshots) are not replayed; in KTO mode unlabelled lines count as true.
    """
    sources = [s for s in store.list_snapshots() if not s.tainted and s.id < before_id]
    frames, users = [], {}
    for snap in sorted(sources, key=lambda s: s.id, reverse=True):  # newest copy of a text wins
        path = Path(snap.path)
        if not path.is_file():
            raise ReplaySourceError(
                f"snapshot {snap.id} is registered for replay but {path} is missing; restore it or mark it tainted"
            )
        if file_sha256(path) != snap.sha256:
            raise ReplaySourceError(f"snapshot file {path} no longer matches its registered sha256; it was modified")
        users[snap.id] = list(snap.user_hashes or [])
        frames.append(
            pl.scan_ndjson(path, schema=_LINE_SCHEMA).select(
                _last("user").alias(PROMPT),
                _last("assistant").alias(RESPONSE),
                _body().alias(BODY),
                pl.col("label").fill_null(True).alias(LABEL),
                pl.lit(snap.id).alias(REPLAY_FROM),
            )
        )
    if not frames:
        return _empty_pool(train_mode), users
    pool = (
        pl.concat(frames)
        .filter(pl.col(PROMPT).is_not_null() & pl.col(RESPONSE).is_not_null())
        .with_columns(text_key(pl.col(PROMPT), pl.col(RESPONSE)).alias(KEY))
        .unique(KEY, keep="first", maintain_order=True)
    )
    if train_mode != "kto":
        pool = pool.filter(pl.col(LABEL)).drop(LABEL)
    return pool, users
