"""The curation steps, each `LazyFrame -> LazyFrame`, and `curate_frame` that runs them in order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from cl_assets.core.curation.columns import (
    CONTEXT,
    CONTEXT_AT,
    CREATED,
    HELPFUL,
    ID,
    KEY,
    LABEL,
    PII,
    PROMPT,
    RANK,
    REGENERATED,
    REPLAY_FROM,
    RESPONSE,
    NEAR_DUPLICATE,
    SUPERSEDED,
    USER,
)
from cl_assets.core.curation.context import (
    BODY,
    CHARS_PER_TOKEN,
    CTX_CONTROL,
    CTX_KEY,
    ROW,
    BodyWriter,
    body_writer,
    context_columns,
    walk_contexts,
)
from cl_assets.core.curation.dedup import (
    _keep_rows,
    duplicate_mask,
    fingerprints,
)
from cl_assets.core.curation.replay import _empty_pool
from cl_assets.core.curation.text import normalise
from cl_assets.core.snapshot import CONTROL_TOKEN
from cl_assets.settings import Settings

COUNT_KEYS = (
    "loaded",
    "no_pii",
    "not_unhelpful",
    "not_superseded",
    "length_ok",
    "no_control_tokens",
    "exact_dedup",
    "near_dedup",
    "per_user_cap",
    "replay_added",
    "final",
)


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
    """Rows where the sanitizer found PII are left out, placeholders or not.

    PII holds the JSON list of the types found (strings): a non-empty one has a quote in it,
    which is a scan of the text rather than a JSON decode of a million lists."""
    return lf.filter(~pl.col(PII).str.contains('"', literal=True).fill_null(False))


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


def drop_superseded(lf: pl.LazyFrame) -> pl.LazyFrame:
    """A question answered and rated 👍 since the previous snapshot replaces its older answers.

    Facts change (a lot moves warehouse, a threshold is raised): when a row rated helpful since
    the last snapshot asks the same question (normalised prompt) as older rows, the older
    answers are dropped, rated 👍 or not, so the next adapter is not taught the old and the new
    answer at once; where such an answer is an earlier turn of a kept conversation, it stays as
    context with `"weight": 0`. Older 👎 rows stay (KTO learns them as undesirable; SFT has
    dropped them already). `curate_rows` marks the rows (SUPERSEDED, `superseded_mask`); without
    the column (no previous snapshot) nothing is superseded.
    """
    if SUPERSEDED not in lf.collect_schema().names():
        return lf
    return lf.filter(~pl.col(SUPERSEDED))


def superseded_mask(rows: pl.DataFrame, fresh: list[str]) -> pl.Series:
    """SUPERSEDED per row: not among `fresh` (ids rated 👍 since the previous snapshot), not
    rated 👎, and its question has an answer that is fresh and still rated 👍.

    The questions answered afresh are few: they are normalised first, and the whole column only
    when there is one (normalising a million prompts costs about a second); the rows are then
    matched by membership, not grouped by question.
    """
    is_fresh = pl.col(ID).is_in(pl.Series(fresh, dtype=pl.String).implode()) & pl.col(HELPFUL).fill_null(False)
    asked = rows.lazy().filter(is_fresh).select(normalise(pl.col(PROMPT))).collect().to_series()
    if asked.is_empty():
        return pl.repeat(False, rows.height, dtype=pl.Boolean, eager=True).alias(SUPERSEDED)
    answered_again = normalise(pl.col(PROMPT)).is_in(asked.unique().implode())
    rated_down = pl.col(HELPFUL).not_().fill_null(False)
    return rows.select((~is_fresh & answered_again & ~rated_down).alias(SUPERSEDED)).to_series()


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
    """Drop conversations with a control token in the prompt, the answer or the kept context."""
    found = pl.col(PROMPT).str.contains(CONTROL_TOKEN) | pl.col(RESPONSE).str.contains(CONTROL_TOKEN)
    if CTX_CONTROL in lf.collect_schema().names():
        found = found | pl.col(CTX_CONTROL).fill_null(False)
    return lf.filter(~found)


def drop_exact_duplicates(near_threshold: float) -> Callable[[pl.LazyFrame], pl.LazyFrame]:
    """One row per normalised (prompt, response): the best-ranked copy; the survivors that are
    near-duplicates of a better-ranked one are marked (NEAR_DUPLICATE) for `drop_near_duplicates`.

    Both from one normalisation of the text, done in chunks so that no normalised copy of the
    column lives on: the exact key, and the MinHash signature the near-duplicates are judged on
    (at `near_threshold`), which lives only here, as numpy, and goes with the step (a column of
    signatures carried to the next step was its biggest thing, 256 bytes a row, copied twice).
    Runs at once rather than in the plan: the work is numpy's on threads of our own, and a frame
    handed back through `map_batches` is copied.

    Whole conversations (CTX_KEY, see `curation.context`): the same last exchange after another
    context is another conversation, so duplicates are judged only among rows with the same
    earlier turns. The context's key joins the exact key, and is folded into every MinHash value
    (equal contexts keep equal values). A row whose earlier turns no other row shares cannot be
    a duplicate of anything, nor anything of it: it is kept without a fingerprint, which spares
    the text work for most follow-up turns.
    """

    def step(lf: pl.LazyFrame) -> pl.LazyFrame:
        df = lf.collect()
        if CTX_KEY in df.columns:
            lonely = df[CTX_KEY].is_not_null() & df[CTX_KEY].is_unique()
            judged = (~lonely).arg_true()
            keys, signatures = fingerprints(df[PROMPT].gather(judged), df[RESPONSE].gather(judged))
            context = df[CTX_KEY].gather(judged)
            keys = pl.DataFrame([keys, context]).select(
                pl.when(pl.col(CTX_KEY).is_null()).then(pl.col(KEY))
                .otherwise(pl.struct(KEY, CTX_KEY).hash(seed=0)).alias(KEY)
            ).to_series()  # fmt: skip
            signatures ^= (context.fill_null(0).to_numpy() & np.uint64(0xFFFFFFFF)).astype(np.uint32)[:, None]
            keep = lonely.to_numpy().copy()
        else:
            judged = pl.int_range(df.height, dtype=pl.UInt32, eager=True)
            keys, signatures = fingerprints(df[PROMPT], df[RESPONSE])
            keep = np.zeros(df.height, dtype=bool)
        ranks = df[RANK].gather(judged)
        best = pl.DataFrame([keys, ranks]).select(pl.col(RANK) == pl.col(RANK).min().over(KEY)).to_series().to_numpy()
        kept_judged = judged.to_numpy()[best]
        signatures = _keep_rows(signatures, np.flatnonzero(best))
        near = np.zeros(df.height, dtype=bool)
        near[kept_judged] = duplicate_mask(signatures, near_threshold, ranks.to_numpy()[best])
        del signatures
        keep[kept_judged] = True
        key = pl.repeat(None, df.height, dtype=pl.UInt64, eager=True).scatter(judged, keys).alias(KEY)
        return df.with_columns(key, pl.Series(NEAR_DUPLICATE, near)).filter(pl.Series(keep)).lazy()

    return step


def drop_near_duplicates(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Drop rows that `drop_exact_duplicates` marked near-duplicates of a better-ranked row
    (rows without a fingerprint are never one)."""
    return lf.filter(~pl.col(NEAR_DUPLICATE)).drop(NEAR_DUPLICATE)


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


def curation_steps(settings: Settings, replay_pool: pl.LazyFrame | None = None) -> list[tuple[str, Step]]:
    """The named steps, in order; each name is also the key of the count after it."""
    pool = replay_pool if replay_pool is not None else _empty_pool(settings.train_mode)
    fraction = settings.replay_fraction if replay_pool is not None else 0.0
    return [
        ("no_pii", drop_pii),
        ("not_unhelpful", drop_unhelpful(settings.train_mode)),
        ("not_superseded", drop_superseded),
        ("length_ok", keep_length(settings.min_chars, settings.max_chars)),
        ("no_control_tokens", drop_control_tokens),
        ("exact_dedup", drop_exact_duplicates(settings.near_dup_threshold)),
        ("near_dedup", drop_near_duplicates),
        ("per_user_cap", cap_per_user(settings.max_rows_per_user)),
        ("replay", add_replay(pool, fraction, settings.seed)),
    ]


def curate_frame(
    interactions: pl.LazyFrame,
    settings: Settings,
    replay_pool: pl.LazyFrame | None = None,
    messages: pl.DataFrame | None = None,
    fresh: list[str] | None = None,
) -> tuple[pl.DataFrame, dict[str, int]]:
    """Run every step; returns the curated rows (output order) and the count after each step.

    `messages`: the stored conversation tree (`store.frames.load_messages`); each row's
    context is walked from its `context_id` and judged with it (see `curation.context`).
    The rows carry BODY, the JSON of the messages before the answer (null: just the prompt).
    `fresh`: ids of interactions rated 👍 since the previous snapshot (`drop_superseded`).
    """
    rows, counts, write_bodies = curate_rows(interactions, settings, replay_pool, messages, fresh)
    return with_bodies(rows, write_bodies).drop(ROW), counts


def with_bodies(rows: pl.DataFrame, write_bodies: BodyWriter | None) -> pl.DataFrame:
    """`rows` (from `curate_rows`) with the BODY of their new rows filled in."""
    if write_bodies is None:
        return rows
    written = write_bodies(rows[ROW]).rename({BODY: "_new_body"})
    joined = rows.join(written, on=ROW, how="left", maintain_order="left")
    return joined.with_columns(pl.coalesce(BODY, "_new_body").alias(BODY)).drop("_new_body")


def curate_rows(
    interactions: pl.LazyFrame | pl.DataFrame,
    settings: Settings,
    replay_pool: pl.LazyFrame | None = None,
    messages: pl.DataFrame | None = None,
    fresh: list[str] | None = None,
) -> tuple[pl.DataFrame, dict[str, int], BodyWriter | None]:
    """`curate_frame`, with the new rows' BODY left for the writer to encode a slice at a
    time (`with_bodies`): the encoded contexts of every line at once would be the biggest
    thing in memory. The rows carry ROW (null for replayed rows, whose BODY is there).

    A DataFrame of `interactions` is taken over: its columns are moved out (it is left empty),
    so that what the steps drop is freed as they go rather than kept alive by the caller."""
    if isinstance(interactions, pl.DataFrame):
        current = pl.DataFrame([interactions.drop_in_place(name) for name in interactions.columns])
    else:
        current = interactions.collect()
    current = current.with_row_index(ROW)
    superseded = None
    if fresh is not None and settings.supersede_answers:  # one pass over the prompts, for the step and the contexts
        current = current.with_columns(superseded_mask(current, fresh))
        superseded = current.filter(pl.col(SUPERSEDED))[ROW]
    contexts = walk_contexts(current, messages, max_depth=settings.max_conversation_messages,
                             budget_chars=settings.train_max_length * CHARS_PER_TOKEN)  # fmt: skip
    current = current.hstack(context_columns(contexts, current.height).drop(ROW).get_columns())
    loaded = current.select(ROW, RESPONSE, HELPFUL, REGENERATED) if CONTEXT in current.columns else None
    current = current.drop(CONTEXT, CONTEXT_AT, strict=False)  # walked: the ids are not needed again
    current = current.lazy().pipe(rank).collect()
    after = {"loaded": current.height}
    for name, step in curation_steps(settings, replay_pool):
        current = current.lazy().pipe(step).collect()
        after[name] = current.height
    if BODY not in current.columns:
        current = current.with_columns(pl.lit(None, pl.String).alias(BODY))
    write_bodies = None
    if loaded is not None and not contexts.chains.is_empty():
        write_bodies = body_writer(contexts, loaded, current.filter(pl.col(REPLAY_FROM).is_null())[ROW], superseded)
    columns = [PROMPT, RESPONSE, BODY, USER, REPLAY_FROM, ROW] + ([LABEL] if settings.train_mode == "kto" else [])
    rows = current.select(columns)
    order = current.select(
        pl.arg_sort_by([pl.col(REPLAY_FROM).is_not_null(), CREATED, ID], nulls_last=True, maintain_order=True)
    ).to_series()
    if not order.equals(pl.int_range(len(order), dtype=order.dtype, eager=True), check_names=False):
        rows = rows[order]  # a copy of the kept text; stores are mostly in creation order already
    counts = {key: after[key] for key in COUNT_KEYS[:-2]}
    counts["replay_added"] = after["replay"] - after["per_user_cap"]
    counts["final"] = after["replay"]
    with_chain = rows[ROW].is_in(contexts.chains[ROW].unique().implode()) if not contexts.chains.is_empty() else None
    counts["with_context"] = int(rows[BODY].is_not_null().sum()) + (int(with_chain.sum()) if with_chain is not None else 0)
    counts["context_trimmed"] = contexts.trimmed
    if settings.train_mode == "kto":
        counts["label_true"] = int(rows[LABEL].sum())
        counts["label_false"] = rows.height - counts["label_true"]
    return rows, counts, write_bodies
