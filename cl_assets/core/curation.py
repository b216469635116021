"""Curation: the interactions in the store become one immutable ChatML JSONL snapshot.

The work is a chain of `LazyFrame -> LazyFrame` steps; `curate_frame` collects after each
one, which gives the row count after every step and lets each step's frame go before the
next is built (a plan of cached stages kept every stage alive to its end). The snapshot
file is written atomically, content-hashed and registered in the store; its id
(`YYYYMMDD_HHMMSS`, UTC) names the dataset, the adapter trained on it, its evaluation and
its deployment.

Ranking, used wherever one copy of several is kept: rated helpful first, then unrated (then,
in KTO mode, rated unhelpful), newest first, then by id. Rows keep their loaded order; each
carries its place in the ranking (RANK), so no step has to reorder the text columns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sqlalchemy import Integer, Select, String, Text, bindparam, cast, func, literal_column, select, type_coerce

from cl_assets.core.events import record_event
from cl_assets.core.files import atomic_write_lines
from cl_assets.core.store import Interaction, Store

log = logging.getLogger(__name__)

# -- column names, defined once ---------------------------------------------------------------
ID = "id"
CREATED = "created_at"
USER = "user_hash"
PROMPT = "prompt"
RESPONSE = "response"
PII = "pii_types"
HELPFUL = "helpful"
REGENERATED = "regenerated"
LABEL = "label"  # KTO: desirable (true) or not (false)
RANK = "_rank"  # 0 = best; see the module docstring
KEY = "_key"  # hash of the normalised prompt and response
SIGNATURE = "_signature"  # MinHash of the words of the normalised prompt + response
NORM_PROMPT, NORM_RESPONSE = "_norm_prompt", "_norm_response"
_WORDS = "_words"
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # index of a uint64's upper half among its two uint32s
_NO_USER = "_no_user"
REPLAY_FROM = "_replay_from"  # snapshot id a replayed row came from (null: a new row)

_SCHEMA: dict[str, pl.DataType] = {
    ID: pl.String(),
    CREATED: pl.Datetime("us", "UTC"),
    USER: pl.String(),
    PROMPT: pl.String(),
    RESPONSE: pl.String(),
    PII: pl.String(),  # the JSON list as text; decoded by Polars, not row by row in Python
    HELPFUL: pl.Boolean(),
    REGENERATED: pl.Boolean(),
}

_SQLITE_TIME = "%Y-%m-%d %H:%M:%S%.f"  # how SQLAlchemy stores DateTime on SQLite

#: Anything shaped like a special token (`<|im_start|>`, `<|endoftext|>`, `<|eot_id|>`, ...):
#: user text holding one could forge a turn once it is rendered through a chat template.
CONTROL_TOKEN = r"<\|[^|<>\n]{0,64}\|>"

SNAPSHOT_ID = re.compile(r"^\d{8}_\d{6}$")
ROLES = ("system", "user", "assistant")
COUNT_KEYS = (
    "loaded",
    "no_pii",
    "not_unhelpful",
    "length_ok",
    "no_control_tokens",
    "exact_dedup",
    "near_dedup",
    "per_user_cap",
    "replay_added",
    "final",
)

# Near-duplicates: MinHash over the words of a turn, 64 permutations (Jaccard estimates
# within about ±0.05 around the usual 0.85 threshold), LSH banding chosen by datasketch.
NUM_PERM = 64
MINHASH_SEED = 1
_FINGERPRINT_CHUNK_ROWS = 10_000  # rows normalised and hashed at once: ~2 KB of temporaries a row
_CACHE_BLOCK = 1 << 16  # hashes per block of _apply_permutations
_PAIR_CHUNK = 50_000  # candidate pairs compared at once (2 × 256 bytes each)
_MAX_PROBLEMS = 50
# Threads for the chunked fingerprints: Polars' collect and numpy's ufuncs release the GIL.
_THREADS = max(1, min(4, pl.thread_pool_size()))
_SQLITE_BATCH_ROWS = 100_000  # rows per Arrow batch; ADBC infers each column's type from the first


class SnapshotExistsError(FileExistsError):
    """A snapshot id is taken already (in the store or on disk); snapshots are immutable."""


class ReplaySourceError(RuntimeError):
    """An earlier snapshot chosen for replay is missing or no longer matches its hash."""


@dataclass(frozen=True)
class SnapshotResult:
    """What one curation run produced; safe to log (counts, ids, a few sample rows)."""

    id: str
    path: Path
    sha256: str
    n_rows: int
    counts: dict[str, int]
    sample: list[dict[str, Any]] = field(default_factory=list)


# -- loading ----------------------------------------------------------------------------------


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
    database = store.engine.url.database if store.dialect == "sqlite" else None
    if database and database != ":memory:" and not database.startswith("file:"):
        return _load_sqlite_file(store, Path(database), moment)
    sqlite = store.dialect == "sqlite"
    stmt = _interactions_query(sqlite, nullable_user=True)
    if moment is not None:
        stmt = stmt.where(Interaction.created_at > moment)
    schema = {**_SCHEMA, CREATED: pl.String()} if sqlite else _SCHEMA
    with store.engine.connect() as conn:
        # Batches keep the driver's Python rows short-lived: peak memory stays near the frame's.
        batches = list(pl.read_database(stmt, conn, iter_batches=True, batch_size=batch_size, schema_overrides=schema))
    frame = pl.concat(batches, rechunk=True) if batches else pl.DataFrame(schema=schema)
    if sqlite:
        frame = frame.with_columns(pl.col(CREATED).str.to_datetime(_SQLITE_TIME, time_zone="UTC"))
    return frame.lazy()


def _interactions_query(sqlite: bool, nullable_user: bool) -> Select[Any]:
    # SQLAlchemy's per-row result processors cost more than the driver itself at a million rows:
    # booleans come as 0/1 and SQLite's timestamps as text, and Polars converts whole columns.
    created = type_coerce(Interaction.created_at, String) if sqlite else Interaction.created_at
    if nullable_user:
        users = [Interaction.user_hash.label(USER)]
    else:  # a flag and a never-null text (see `_load_sqlite_file`)
        never_null = func.coalesce(Interaction.user_hash, literal_column("''"))
        users = [Interaction.user_hash.is_(None).label(_NO_USER), never_null.label(USER)]
    return select(
        Interaction.id.label(ID),
        created.label(CREATED),
        *users,
        Interaction.prompt.label(PROMPT),
        Interaction.response.label(RESPONSE),
        cast(Interaction.pii_types, Text).label(PII),
        type_coerce(Interaction.helpful, Integer).label(HELPFUL),
        type_coerce(Interaction.regenerated, Integer).label(REGENERATED),
    )


def _load_sqlite_file(store: Store, path: Path, moment: datetime | None) -> pl.LazyFrame:
    """Read with ADBC, in a child process (see `arrow_reader` for why), in one statement.

    ADBC types each column by the values of its first batch and fails on a later value of
    another type; a text column that is NULL throughout the first batch would come out as an
    integer. So `user_hash` arrives as a flag plus a text that is never NULL.
    """
    from cl_assets.core.store.arrow_reader import read_query
    from cl_assets.core.store.engine import SQLITE_BUSY_TIMEOUT_MS

    dialect = store.engine.dialect
    stmt = _interactions_query(sqlite=True, nullable_user=False)
    since = None
    if moment is not None:
        stmt = stmt.where(Interaction.created_at > bindparam("since", type_=Interaction.created_at.type))
        to_text = Interaction.created_at.type.dialect_impl(dialect).bind_processor(dialect)
        since = to_text(moment) if to_text else str(moment)  # the text SQLAlchemy binds
    frame = read_query(path, str(stmt.compile(dialect=dialect)), since, busy_timeout_ms=SQLITE_BUSY_TIMEOUT_MS,
                       batch_rows=_SQLITE_BATCH_ROWS)
    # Casts for an empty result, whose columns ADBC types as integers. Collected (and in one
    # chunk) here, so that the Arrow batches go now rather than live on in the plan.
    text = {name: pl.col(name).cast(pl.String) for name in (ID, CREATED, USER, PROMPT, RESPONSE, PII)}
    converted = frame.lazy().select(
        text[ID],
        text[CREATED].str.to_datetime(_SQLITE_TIME, time_zone="UTC"),
        pl.when(pl.col(_NO_USER) == 0).then(text[USER]).alias(USER),
        text[PROMPT],
        text[RESPONSE],
        text[PII],
        pl.col(HELPFUL).cast(pl.Boolean),
        pl.col(REGENERATED).cast(pl.Boolean),
    )
    return converted.collect().rechunk().lazy()


# -- steps: LazyFrame -> LazyFrame -----------------------------------------------------------------


_PUNCTUATION = r"[^\p{L}\p{N}\s]+"
_SPACING = r"[^\S ]|\s{2,}"


def normalise(text: pl.Expr) -> pl.Expr:
    """Lowercase, punctuation and symbols removed, whitespace collapsed.

    Both patterns match only what they change (punctuation, real whitespace runs): a pattern
    matching every single space makes the regex engine rewrite each word boundary, 2-3x slower.
    """
    return _without_punctuation(text).str.replace_all(_SPACING, " ").str.strip_chars()


def _without_punctuation(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(_PUNCTUATION, "")


def _may_need_spacing(text: pl.Expr) -> pl.Expr:
    """False only where `_SPACING` cannot match: ASCII text without tab, CR, LF, VT, FF or two spaces.

    Ten times cheaper than the pattern itself, whose Unicode whitespace class defeats the
    regex engine's prefilter: it scans every byte of every row, though such rows are rare.
    """
    ascii_space = text.str.contains(r"[\t\n\x0B\x0C\r]") | text.str.contains("  ", literal=True)
    return ascii_space | (text.str.len_bytes() != text.str.len_chars())


def _respace(text: pl.Series, may_need: pl.Series) -> pl.Series:
    """`text` with `_SPACING` applied, running the pattern only on the rows that may need it."""
    rows = may_need.arg_true()
    if rows.is_empty():
        return text
    return text.scatter(rows, text.gather(rows).str.replace_all(_SPACING, " "))


def text_key(prompt: pl.Expr, response: pl.Expr) -> pl.Expr:
    """One hash per normalised (prompt, response) pair: the exact-duplicate key."""
    return _pair_key(normalise(prompt), normalise(response))


def _pair_key(normalised_prompt: pl.Expr, normalised_response: pl.Expr) -> pl.Expr:
    return pl.struct(normalised_prompt.alias("p"), normalised_response.alias("r")).hash(seed=0)


def rank(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Number the rows best first (RANK), so later steps can keep 'the best copy'.

    The rows stay where they are: sorting a row index and inverting that permutation costs a
    fraction of moving every text column into rank order.
    """
    best, unrated, worst = (pl.lit(v, pl.UInt8) for v in (0, 1, 2))
    rating = pl.when(pl.col(HELPFUL)).then(best).when(pl.col(HELPFUL).is_null()).then(unrated).otherwise(worst)
    by_rank = pl.int_range(pl.len(), dtype=pl.get_index_type()).sort_by(
        [rating, pl.col(CREATED), pl.col(ID)], descending=[False, True, False], nulls_last=True
    )
    return lf.with_columns(by_rank.arg_sort().alias(RANK))


def drop_pii(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Rows where the sanitizer found PII are left out, placeholders or not."""
    found = pl.col(PII).str.json_decode(pl.List(pl.String)).list.len().fill_null(0)
    return lf.filter(found == 0)


def drop_unhelpful(train_mode: str) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """SFT: drop 👎 rows and regenerated ones (a weak 👎 that an explicit 👍 overrides).

    KTO: keep 👎 rows as `label: false` and unrated/👍 rows as `label: true`; drop only
    regenerated rows nobody rated, a negative signal too weak to train on either way.
    """

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        regenerated = pl.col(REGENERATED).fill_null(False)
        if train_mode == "kto":
            kept = lf.filter(~regenerated | pl.col(HELPFUL).is_not_null())
            return kept.with_columns(pl.col(HELPFUL).fill_null(True).alias(LABEL))
        not_rated_down, rated_up = pl.col(HELPFUL).fill_null(True), pl.col(HELPFUL).fill_null(False)
        return lf.filter(not_rated_down & (~regenerated | rated_up))

    return step


def keep_length(min_chars: int, max_chars: int) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Drop empty or too short prompts/responses and turns longer than `max_chars` in all."""
    shortest = max(min_chars, 1)

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.filter(
            (pl.col(PROMPT).str.strip_chars().str.len_chars() >= shortest)
            & (pl.col(RESPONSE).str.strip_chars().str.len_chars() >= shortest)
            & (pl.col(PROMPT).str.len_chars() + pl.col(RESPONSE).str.len_chars() <= max_chars)
        )

    return step


def drop_control_tokens(lf: pl.LazyFrame) -> pl.LazyFrame:
    return lf.filter(~(pl.col(PROMPT).str.contains(CONTROL_TOKEN) | pl.col(RESPONSE).str.contains(CONTROL_TOKEN)))


def drop_exact_duplicates(lf: pl.LazyFrame) -> pl.LazyFrame:
    """One row per normalised (prompt, response): the best-ranked copy.

    Adds KEY and the MinHash SIGNATURE that `drop_near_duplicates` judges on, both from one
    normalisation of the text, done in chunks so that no normalised copy of the column lives on.
    Runs at once rather than in the plan (as does `drop_near_duplicates`): the work is numpy's
    on threads of our own, and a frame handed back through `map_batches` is copied.
    """
    df = lf.collect()
    keys, signatures = fingerprints(df[PROMPT], df[RESPONSE])
    keyed = df.with_columns(keys)
    best = keyed.select(pl.col(RANK) == pl.col(RANK).min().over(KEY)).to_series()
    kept = _keep_rows(signatures, np.flatnonzero(best.to_numpy()))
    return keyed.filter(best).with_columns(pl.Series(SIGNATURE, kept)).lazy()


def drop_near_duplicates(threshold: float) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Drop rows whose text is a MinHash near-duplicate of a better-ranked row."""

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        df = lf.collect()
        signatures = df[SIGNATURE].to_numpy() if df.height else np.empty((0, NUM_PERM), np.uint32)
        duplicate = duplicate_mask(signatures, threshold, df[RANK].to_numpy())
        return df.drop(SIGNATURE).filter(pl.Series(~duplicate)).lazy()

    return step


def cap_per_user(max_rows: int) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """At most `max_rows` best-ranked rows per user; rows without a user are each their own."""

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        place = pl.col(RANK).rank("ordinal").over(USER)
        return lf.filter(pl.col(USER).is_null() | (place <= max_rows))

    return step


def add_replay(pool: pl.LazyFrame, fraction: float, seed: int) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """Mix in round(fraction × rows) rows sampled (seeded) from `pool`, none already present."""

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        lf = lf.with_columns(pl.lit(None, pl.String).alias(REPLAY_FROM))
        if fraction <= 0:
            return lf
        position, present = "_position", "_present"
        sampled = (
            pool.join(lf.select(KEY), on=KEY, how="anti")
            .sort(pl.col(KEY).hash(seed=seed))  # a seeded shuffle
            .with_row_index(position)
            .join(lf.select(pl.len().alias(present)), how="cross")
            .filter(pl.col(position) < (pl.col(present) * fraction).round())
            .drop(position, present)
        )
        return pl.concat([lf, sampled], how="diagonal_relaxed")

    return step


Step = Callable[[pl.LazyFrame], pl.LazyFrame]


def curation_steps(settings: Any, replay_pool: pl.LazyFrame | None = None) -> list[tuple[str, Step]]:
    """The named steps, in order; each name is also the key of the count after it."""
    pool = replay_pool if replay_pool is not None else _empty_pool(settings.train_mode)
    fraction = settings.replay_fraction if replay_pool is not None else 0.0
    return [
        ("no_pii", drop_pii),
        ("not_unhelpful", drop_unhelpful(settings.train_mode)),
        ("length_ok", keep_length(settings.min_chars, settings.max_chars)),
        ("no_control_tokens", drop_control_tokens),
        ("exact_dedup", drop_exact_duplicates),
        ("near_dedup", drop_near_duplicates(settings.near_dup_threshold)),
        ("per_user_cap", cap_per_user(settings.max_rows_per_user)),
        ("replay", add_replay(pool, fraction, settings.seed)),
    ]


def curate_frame(
    interactions: pl.LazyFrame, settings: Any, replay_pool: pl.LazyFrame | None = None
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Run every step; returns the curated rows (output order) and the count after each step."""
    current = interactions.pipe(rank).collect()
    after = {"loaded": current.height}
    for name, step in curation_steps(settings, replay_pool):
        current = current.lazy().pipe(step).collect()
        after[name] = current.height
    columns = [PROMPT, RESPONSE, USER, REPLAY_FROM] + ([LABEL] if settings.train_mode == "kto" else [])
    rows = current.select(columns)
    order = current.select(
        pl.arg_sort_by([pl.col(REPLAY_FROM).is_not_null(), CREATED, ID], nulls_last=True, maintain_order=True)
    ).to_series()
    if not order.equals(pl.int_range(len(order), dtype=order.dtype, eager=True), check_names=False):
        rows = rows[order]  # a copy of the kept text; stores are mostly in creation order already
    counts = {key: after[key] for key in COUNT_KEYS[:-2]}
    counts["replay_added"] = after["replay"] - after["per_user_cap"]
    counts["final"] = after["replay"]
    if settings.train_mode == "kto":
        counts["label_true"] = int(rows[LABEL].sum())
        counts["label_false"] = rows.height - counts["label_true"]
    return rows, counts


# -- near-duplicates: MinHash signatures + LSH banding ----------------------------------------------
#
# datasketch is kept rather than hand-writing MinHash LSH: its permutation family (affine32:
# a MurmurHash3 pre-mix, then a·h+b mod 2^32 with odd a) and its choice of bands × rows
# minimising false positives + false negatives at a threshold are tested, documented code,
# and the tests pin our signatures to `datasketch.MinHash.update_batch` value for value.
# Only the application is vectorised: one `MinHash` object plus `MinHashLSH.insert/query`
# per row measured ~35 µs + ~25 µs here, i.e. about a minute for a million rows, whereas
# applying the same permutations to every shingle at once with numpy and bucketing the bands
# with sorted keys takes seconds. Chunks of rows go to a few threads: Polars (normalising,
# splitting, hashing) and numpy (the permutations) both release the GIL while they work.


def minhash_parameters(threshold: float, num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(a, b) of datasketch's affine32 permutations and its LSH (bands, rows) for `threshold`."""
    return (*_permutations(num_perm), *_bands(threshold, num_perm))


@functools.cache
def _permutations(num_perm: int = NUM_PERM) -> tuple[np.ndarray, np.ndarray]:
    from datasketch import MinHash

    a, b = (p.astype(np.uint32) for p in MinHash(num_perm=num_perm, seed=MINHASH_SEED, scheme="affine32").permutations)
    a.flags.writeable = b.flags.writeable = False  # shared by every caller
    return a, b


@functools.cache
def _bands(threshold: float, num_perm: int) -> tuple[int, int]:
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    return lsh.b, lsh.r


def _words(text: pl.Expr) -> pl.Expr:
    """The shingles near-duplicates are judged on: the words of a normalised text.

    Single words, not word n-grams: turns are short, and with 3-word shingles a "Sure! " in
    front of a 20-word answer already pushes the Jaccard similarity under 0.85 (on the demo
    data 3-word shingles found 2 near-duplicates, single words 41, all stylistic variants).
    """
    return text.fill_null("").str.split(" ")


def _hashed_words(words: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """(32-bit hashes of the words of every row, row starts) of a list column of words."""
    lengths = words.list.len().to_numpy()
    row_starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=row_starts[1:])
    hashes = words.explode().hash(seed=MINHASH_SEED).to_numpy()
    return hashes.view(np.uint32)[_HIGH_HALF::2], row_starts  # the upper 32 bits, without a copy


def shingle_hashes(texts: pl.Series) -> tuple[np.ndarray, np.ndarray]:
    """32-bit hashes of each text's words (see `_words`).

    Returns (hashes, row starts): row i owns hashes[starts[i]:starts[i+1]]; every row has one.
    """
    hashes, row_starts = _hashed_words(pl.select(_words(pl.lit(texts))).to_series())
    return np.ascontiguousarray(hashes), row_starts


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's finalizer, the pre-mix datasketch's affine32 scheme applies to inputs."""
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(0x85EBCA6B)
    h ^= h >> np.uint32(13)
    h *= np.uint32(0xC2B2AE35)
    h ^= h >> np.uint32(16)
    return h


def _signatures(hashes: np.ndarray, row_starts: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    signatures = np.empty((len(row_starts), len(a)), dtype=np.uint32)
    _apply_permutations(_fmix32(hashes), row_starts, a, b, signatures)
    return signatures


def _in_chunks(fn: Callable[[int, int], None], n: int) -> None:
    """fn(start, stop) over consecutive chunks of n rows, on a few threads."""
    bounds = [(start, min(start + _FINGERPRINT_CHUNK_ROWS, n)) for start in range(0, n, _FINGERPRINT_CHUNK_ROWS)]
    if len(bounds) <= 1 or _THREADS == 1:
        for bound in bounds:
            fn(*bound)
        return
    with ThreadPoolExecutor(max_workers=_THREADS, thread_name_prefix="cl-minhash") as pool:
        for _ in pool.map(lambda bound: fn(*bound), bounds):
            pass  # re-raises a chunk's error


def minhash_signatures(texts: pl.Series, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(rows × permutations) MinHash signatures, equal to datasketch's for the same shingles."""
    signatures = np.empty((len(texts), len(a)), dtype=np.uint32)

    def chunk(start: int, stop: int) -> None:
        hashes, row_starts = shingle_hashes(texts.slice(start, stop - start))
        _apply_permutations(_fmix32(hashes), row_starts, a, b, signatures[start:stop])

    _in_chunks(chunk, len(texts))
    return signatures


def fingerprints(prompts: pl.Series, responses: pl.Series) -> tuple[pl.Series, np.ndarray]:
    """Per row: the exact-duplicate key (as `text_key`) and the MinHash signature of its text.

    The text near-duplicates are judged on is the normalised prompt, a space, the normalised
    response. Both come from one normalisation per chunk of rows, which is then dropped.
    """
    a, b = _permutations()
    texts = pl.DataFrame({PROMPT: prompts, RESPONSE: responses})
    keys = np.empty(texts.height, dtype=np.uint64)
    signatures = np.empty((texts.height, len(a)), dtype=np.uint32)

    def chunk(start: int, stop: int) -> None:
        columns = {PROMPT: NORM_PROMPT, RESPONSE: NORM_RESPONSE}
        part = (
            texts.slice(start, stop - start)
            .lazy()
            .select(
                *(_without_punctuation(pl.col(raw)).alias(norm) for raw, norm in columns.items()),
                *(_may_need_spacing(_without_punctuation(pl.col(raw))).alias(raw) for raw in columns),
            )
            .collect()
        )
        normalised = (
            pl.DataFrame([_respace(part[norm], part[raw]) for raw, norm in columns.items()])
            .lazy()
            .select(pl.col(NORM_PROMPT, NORM_RESPONSE).str.strip_chars())
            .select(
                _pair_key(pl.col(NORM_PROMPT), pl.col(NORM_RESPONSE)).alias(KEY),
                _words(pl.concat_str([NORM_PROMPT, NORM_RESPONSE], separator=" ")).alias(_WORDS),
            )
            .collect()
        )
        keys[start:stop] = normalised[KEY].to_numpy()
        hashes, row_starts = _hashed_words(normalised[_WORDS])
        _apply_permutations(_fmix32(hashes), row_starts, a, b, signatures[start:stop])

    _in_chunks(chunk, texts.height)
    return pl.Series(KEY, keys), signatures


def _keep_rows(values: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """values[kept] for increasing `kept`, moved forward in place: no second copy of `values`."""
    for start in range(0, len(kept), _FINGERPRINT_CHUNK_ROWS):
        rows = kept[start : start + _FINGERPRINT_CHUNK_ROWS]
        values[start : start + len(rows)] = values[rows]  # rows[i] >= start + i: read before overwritten
    return values[: len(kept)]


def _apply_permutations(mixed: np.ndarray, row_starts: np.ndarray, a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out[row, j] = min over the row's hashes of a[j]·h + b[j] (mod 2^32).

    Blocks of whole rows small enough to stay in cache while all permutations pass over them:
    twice as fast as streaming every permutation over all hashes.
    """
    row_ends = np.append(row_starts[1:], len(mixed))
    cuts = np.unique(np.append(np.searchsorted(row_starts, np.arange(0, len(mixed), _CACHE_BLOCK)), len(row_starts)))
    for first, stop in zip(cuts[:-1], cuts[1:], strict=True):
        block = mixed[row_starts[first] : row_ends[stop - 1]]
        local = row_starts[first:stop] - row_starts[first]
        permuted = np.empty_like(block)
        for j in range(len(a)):
            np.multiply(block, a[j], out=permuted)
            np.add(permuted, b[j], out=permuted)
            out[first:stop, j] = np.minimum.reduceat(permuted, local)


def near_duplicate_mask(texts: pl.Series, threshold: float) -> np.ndarray:
    """True for each text that is a near-duplicate of an earlier (better-ranked) one."""
    a, b, _, _ = minhash_parameters(threshold)
    return duplicate_mask(minhash_signatures(texts, a, b), threshold)


def duplicate_mask(signatures: np.ndarray, threshold: float, rank: np.ndarray | None = None) -> np.ndarray:
    """True for each row whose signature marks it a near-duplicate of a better-ranked row.

    `rank`: each row's place, 0 = best (default: the row order). Rows sharing an LSH band
    bucket are candidates; a candidate pair counts when the MinHash estimate of their Jaccard
    similarity reaches `threshold`. Each row is compared with the best row of each of its
    buckets and with the row ranked just before it there, so the best row of every cluster
    is always kept and chains of near-duplicates collapse onto it.
    """
    n = len(signatures)
    if n < 2:
        return np.zeros(n, dtype=bool)
    bands, rows_per_band = _bands(threshold, signatures.shape[1])
    by_rank = np.arange(n) if rank is None else np.argsort(rank, kind="stable")

    # The band's values, two to a 64-bit word where a word lies inside the band, FNV-style
    # folded into one bucket key: half the passes of folding them one by one.
    signatures = np.ascontiguousarray(signatures)
    words = signatures.view(np.uint64) if signatures.shape[1] % 2 == 0 else signatures[:, :0]

    def band_pairs(band: int) -> list[np.ndarray]:
        first, stop = band * rows_per_band, (band + 1) * rows_per_band
        inside = [w for w in range((first + 1) // 2, stop // 2) if w < words.shape[1]]
        covered = {column for w in inside for column in (2 * w, 2 * w + 1)}
        parts = [words[:, w] for w in inside] + [signatures[:, c] for c in range(first, stop) if c not in covered]
        key = np.full(n, band, dtype=np.uint64)
        for part in parts:
            key ^= part
            key *= np.uint64(0x100000001B3)
        key = key[by_rank]  # in rank order, and it stays so per bucket (a stable sort)
        sorting = np.argsort(key, kind="stable")
        order, sorted_key = by_rank[sorting], key[sorting]
        follows = np.flatnonzero(sorted_key[1:] == sorted_key[:-1]) + 1  # positions with a better row before
        if not len(follows):
            return []
        starts = np.zeros(n, dtype=np.int64)
        starts[1:] = np.where(sorted_key[1:] != sorted_key[:-1], np.arange(1, n), 0)
        np.maximum.accumulate(starts, out=starts)  # each position's bucket start: the bucket's best row
        rows = order[follows].astype(np.uint64) << np.uint64(32)
        return [rows | order[starts[follows]].astype(np.uint64), rows | order[follows - 1].astype(np.uint64)]

    with ThreadPoolExecutor(max_workers=min(_THREADS, bands), thread_name_prefix="cl-lsh") as pool:
        pairs = [pair for found in pool.map(band_pairs, range(bands)) for pair in found]
    duplicate = np.zeros(n, dtype=bool)
    if not pairs:
        return duplicate
    candidates = np.unique(np.concatenate(pairs))
    for start in range(0, len(candidates), _PAIR_CHUNK):
        chunk = candidates[start : start + _PAIR_CHUNK]
        rows, others = (chunk >> np.uint64(32)).astype(np.int64), (chunk & np.uint64(0xFFFFFFFF)).astype(np.int64)
        similar = np.count_nonzero(signatures[rows] == signatures[others], axis=1) / signatures.shape[1] >= threshold
        duplicate[rows[similar]] = True
    return duplicate


# -- replay --------------------------------------------------------------------------------------


def _empty_pool(train_mode: str) -> pl.LazyFrame:
    schema: dict[str, pl.DataType] = {PROMPT: pl.String(), RESPONSE: pl.String(), KEY: pl.UInt64(), REPLAY_FROM: pl.String()}
    if train_mode == "kto":
        schema[LABEL] = pl.Boolean()
    return pl.LazyFrame(schema=schema)


_LINE_SCHEMA = {
    "messages": pl.List(pl.Struct({"role": pl.String(), "content": pl.String()})),
    "label": pl.Boolean(),
}


def _first(role: str) -> pl.Expr:
    msg = pl.element()
    return pl.col("messages").list.eval(msg.filter(msg.struct.field("role") == role).struct.field("content")).list.first()


def replay_pool(store: Store, before_id: str, train_mode: str) -> tuple[pl.LazyFrame, dict[str, list[str]]]:
    """Rows of earlier untainted snapshots, one per text, and each source's user hashes.

    A replayed row takes the first user/assistant pair of its line. In SFT mode lines labelled
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
                _first("user").alias(PROMPT),
                _first("assistant").alias(RESPONSE),
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


# -- the snapshot ----------------------------------------------------------------------------------


def new_snapshot_id(now: datetime | None = None) -> str:
    moment = now or datetime.now(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y%m%d_%H%M%S")


def snapshot_path(settings: Any, snapshot_id: str) -> Path:
    return settings.curated_dir / f"curated_{snapshot_id}.jsonl"


def chatml_lines(rows: pl.DataFrame, train_mode: str) -> pl.Series:
    """One JSON conversation per row, encoded by Polars (no per-row Python).

    Each message is a JSON object encoded by `json_encode`; only the fixed frame around them
    is literal text.
    """

    def message(role: str, column: str) -> pl.Expr:
        return pl.struct(pl.lit(role).alias("role"), pl.col(column).alias("content")).struct.json_encode()

    parts = [pl.lit('{"messages":['), message("user", PROMPT), pl.lit(","), message("assistant", RESPONSE), pl.lit("]")]
    if train_mode == "kto":
        parts.append(pl.when(pl.col(LABEL)).then(pl.lit(',"label":true')).otherwise(pl.lit(',"label":false')))
    parts.append(pl.lit("}"))
    return rows.select(pl.concat_str(parts).alias("line")).to_series()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def curate_snapshot(
    settings: Any,
    store: Store,
    *,
    snapshot_id: str | None = None,
    note: str | None = None,
    since: datetime | None = None,
) -> SnapshotResult:
    """Curate the store into `curated_<id>.jsonl`, register it and record a `snapshot` event.

    Refuses an id that the store or the curated folder holds already. The feedback watermark
    is read before the interactions, so feedback arriving meanwhile counts towards the next
    snapshot rather than being lost between two.
    """
    snapshot_id = snapshot_id or new_snapshot_id()
    if not SNAPSHOT_ID.match(snapshot_id):
        raise ValueError(f"snapshot id must look like YYYYMMDD_HHMMSS, not {snapshot_id!r}")
    path = snapshot_path(settings, snapshot_id)
    if store.get_snapshot(snapshot_id) is not None or path.exists():
        raise SnapshotExistsError(f"snapshot {snapshot_id} exists already; snapshots are immutable, pick a new id")

    watermark = store.feedback_since(0)[1]
    pool, pool_users = replay_pool(store, snapshot_id, settings.train_mode) if settings.replay_fraction > 0 else (None, {})
    rows, counts = curate_frame(load_interactions(store, since), settings, pool)

    lines = chatml_lines(rows, settings.train_mode)
    atomic_write_lines(path, lines)
    try:
        sha256 = file_sha256(path)
        user_hashes = set(rows[USER].drop_nulls().unique().to_list())
        for source in rows[REPLAY_FROM].drop_nulls().unique().to_list():
            user_hashes.update(pool_users.get(source, []))  # who a replayed row came from is unknown
        store.add_snapshot(
            id=snapshot_id,
            path=str(path),
            sha256=sha256,
            n_rows=rows.height,
            counts=counts,
            user_hashes=sorted(user_hashes),
            feedback_watermark=watermark,
            note=note,
        )
    except BaseException:
        if store.get_snapshot(snapshot_id) is None:  # never leave a file the registry lacks
            path.unlink(missing_ok=True)
        raise
    record_event(settings, store, "snapshot", snapshot_id=snapshot_id, n_rows=rows.height, sha256=sha256, counts=counts)
    log.info("snapshot %s: %d rows (%s)", snapshot_id, rows.height, counts)
    sample = [json.loads(line) for line in lines.head(5).to_list()]
    return SnapshotResult(snapshot_id, path, sha256, rows.height, counts, sample)


# -- validation (for the asset checks) -------------------------------------------------------------


def validate_snapshot(path: Path) -> list[str]:
    """Problems with a snapshot file: not ChatML as CL writes it, PII or control tokens.

    Messages name line numbers and PII types, never the text.
    """
    from cl_assets.core.pii import find_pii

    path = Path(path)
    if not path.is_file():
        return [f"{path} does not exist"]
    problems: list[str] = []
    extra = 0

    def problem(message: str) -> None:
        nonlocal extra
        if len(problems) < _MAX_PROBLEMS:
            problems.append(message)
        else:
            extra += 1

    control = re.compile(CONTROL_TOKEN)
    with path.open("r", encoding="utf-8", errors="strict") as fh:
        try:
            for number, line in enumerate(fh, start=1):
                for message in _line_problems(line, control, find_pii):
                    problem(f"line {number}: {message}")
        except UnicodeDecodeError as exc:
            problem(f"not valid UTF-8 (byte {exc.start} of a block)")
    if extra:
        problems.append(f"... and {extra} more problem(s)")
    return problems


def _line_problems(line: str, control: re.Pattern[str], find_pii: Callable[[str], list[Any]]) -> list[str]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        return [f"not valid JSON ({exc.msg})"]
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        return ["expected an object with a non-empty 'messages' list"]
    if "label" in obj and not isinstance(obj["label"], bool):
        return ["'label' must be true or false"]
    found: list[str] = []
    roles = []
    for i, msg in enumerate(obj["messages"]):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            found.append(f"message {i} needs a role in {ROLES} and a string content")
            continue
        roles.append(msg["role"])
        if control.search(msg["content"]):
            found.append(f"message {i} contains a control token")
        types = sorted({f.type for f in find_pii(msg["content"])})
        if types:
            found.append(f"message {i} contains PII ({', '.join(types)})")
    if "user" not in roles or "assistant" not in roles:
        found.append("needs at least one user and one assistant message")
    elif roles[-1] != "assistant":
        found.append("the last message must be the assistant's")
    return found


__all__ = [
    "COUNT_KEYS",
    "CONTROL_TOKEN",
    "ReplaySourceError",
    "SnapshotExistsError",
    "SnapshotResult",
    "curate_frame",
    "curate_snapshot",
    "load_interactions",
    "new_snapshot_id",
    "snapshot_path",
    "validate_snapshot",
]
