"""Writing the snapshot: ChatML lines, atomic file, hash, registry row and event."""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from cl_assets.core.curation.columns import LABEL, PROMPT, REPLAY_FROM, RESPONSE, USER
from cl_assets.core.curation.context import BODY
from cl_assets.core.curation.filters import curate_rows, with_bodies
from cl_assets.core.curation.replay import replay_pool
from cl_assets.core.events import record_event
from cl_assets.core.files import atomic_write_bytes
from cl_assets.core.snapshot import (
    check_snapshot_id,
    new_snapshot_id,
    snapshot_path,
)
from cl_assets.core.store import Store
from cl_assets.core.store.frames import read_conversations
from cl_assets.settings import Settings

log = logging.getLogger(__name__)
_LINES_CHUNK = 50_000
_ENCODERS = 2


class SnapshotExistsError(FileExistsError):
    """A snapshot id is taken already (in the store or on disk); snapshots are immutable."""


class NothingToCurateError(ValueError):
    """No interaction passed curation: there is no snapshot to write (the counts say why)."""

    def __init__(self, counts: dict[str, int]) -> None:
        self.counts = counts
        steps = ", ".join(f"{key} {value}" for key, value in counts.items())
        super().__init__(f"nothing qualifies for a snapshot, so none was written (rows after each step: {steps})")


@dataclass(frozen=True)
class SnapshotResult:
    """What one curation run produced: counts, ids and the path (safe to log; no text, which
    erasure could not reach in Dagster's event log)."""

    id: str
    path: Path
    sha256: str
    n_rows: int
    counts: dict[str, int]


def chatml_lines(rows: pl.DataFrame, train_mode: str, *, newline: bool = False) -> pl.Series:
    """One JSON conversation per row, encoded by Polars (no per-row Python).

    Each message is a JSON object encoded by `json_encode`; only the fixed frame around them
    is literal text. A row's BODY (its context up to the prompt, already encoded) comes before
    the answer; a row without one is its prompt and answer. `newline`: end each line with one.
    """

    def message(role: str, column: str) -> pl.Expr:
        return pl.struct(pl.lit(role).alias("role"), pl.col(column).alias("content")).struct.json_encode()

    before = message("user", PROMPT)
    if BODY in rows.columns:
        before = pl.coalesce(pl.col(BODY), before)
    parts = [pl.lit('{"messages":['), before, pl.lit(","), message("assistant", RESPONSE), pl.lit("]")]
    if train_mode == "kto":
        parts.append(pl.when(pl.col(LABEL)).then(pl.lit(',"label":true')).otherwise(pl.lit(',"label":false')))
    parts.append(pl.lit("}\n" if newline else "}"))
    return rows.select(pl.concat_str(parts).alias("line")).to_series()


def _utf8(lines: pl.Series) -> memoryview:
    """The UTF-8 bytes of `lines`, back to back: Arrow's data buffer of the column, not a
    Python string per line."""
    array = lines.to_arrow(compat_level=pl.CompatLevel.oldest())  # large_string: int64 offsets, one data buffer
    offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset : array.offset + len(array) + 1]
    return memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]


def curate_snapshot(
    settings: Settings,
    store: Store,
    *,
    snapshot_id: str | None = None,
    note: str | None = None,
    since: datetime | None = None,
) -> SnapshotResult:
    """Curate the store into `curated_<id>.jsonl`, register it and record a `snapshot` event.

    Refuses an id that the store or the curated folder holds already, and raises
    `NothingToCurateError` (writing and registering nothing) when no row qualifies. The
    feedback watermark is read before the interactions, so feedback arriving meanwhile counts
    towards the next snapshot rather than being lost between two.
    """
    snapshot_id = check_snapshot_id(snapshot_id or new_snapshot_id())
    path = snapshot_path(settings, snapshot_id)
    if store.get_snapshot(snapshot_id) is not None or path.exists():
        raise SnapshotExistsError(f"snapshot {snapshot_id} exists already; snapshots are immutable, pick a new id")

    watermark = store.feedback_since(0)[1]
    previous = store.latest_snapshot()
    # Rated 👍 since the previous snapshot: their answers supersede older ones to the same question.
    fresh = store.rated_helpful_since(previous.feedback_watermark) if previous is not None else None
    pool, pool_users = replay_pool(store, snapshot_id, settings.train_mode) if settings.replay_fraction > 0 else (None, {})
    interactions, messages = read_conversations(store, since)
    rows, counts, write_bodies = curate_rows(interactions, settings, pool, messages, fresh)  # takes the columns over
    del interactions, messages
    if rows.is_empty():
        raise NothingToCurateError(counts)

    def encoded(start: int) -> memoryview:
        part = with_bodies(rows.slice(start, _LINES_CHUNK), write_bodies)
        return _utf8(chatml_lines(part, settings.train_mode, newline=True))

    def chunks() -> Iterator[memoryview]:
        """The lines in slices, in order, two encoded at once on threads (Polars releases the
        GIL; one slice's work is one thread's): a few slices' contexts and lines alive at a time."""
        with ThreadPoolExecutor(max_workers=_ENCODERS, thread_name_prefix="cl-lines") as pool:
            pending: deque[Future[memoryview]] = deque()
            for start in range(0, rows.height, _LINES_CHUNK):
                pending.append(pool.submit(encoded, start))
                if len(pending) == _ENCODERS:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()

    sha256 = atomic_write_bytes(path, chunks())  # hashed as written
    try:
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
    return SnapshotResult(snapshot_id, path, sha256, rows.height, counts)
