"""Curation's fast paths agree with the plain definitions: the ADBC loader with the ORM, the
chunked, threaded fingerprints with `text_key` and datasketch, the rank-aware near-duplicate
mask with the one over rows in rank order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from cl_assets.core import curation
from cl_assets.core.curation import dedup, text
from cl_assets.core.store import frames
from cl_assets.core.ingest import Ingestor
from cl_assets.core.store import Store
from cl_assets.settings import Settings

T0 = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def any_store(any_db_settings: Settings) -> Iterator[Store]:
    opened = Store.from_settings(any_db_settings)
    yield opened
    opened.close()


def test_loader_returns_the_stored_values(any_db_settings: Settings, any_store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    # Batches of 2 rows: ADBC types a column by its first batch, and the first rows have no user
    # and no rating, so a NULL-only first batch must not fix `user_hash` to an integer.
    monkeypatch.setattr(frames, "_SQLITE_BATCH_ROWS", 2)
    ingestor = Ingestor(any_db_settings, any_store)
    for i in range(7):
        done = ingestor.ingest_interaction(
            prompt=f"Question {i}: does the dock at pier {i} open early?",
            response=f"Answer {i}: yes, at {i} o'clock." + (" Mail ops@example.com." if i == 5 else ""),
            user_id=None if i < 3 else f"user-{i % 2}",
            timestamp=T0 + timedelta(minutes=i, microseconds=123_456 * (i % 2)),
        )
        if i >= 4:
            ingestor.record_feedback(done.id, i % 2 == 0)
    if any_store.dialect == "sqlite":  # the ADBC path, not SQLAlchemy's
        monkeypatch.setattr(pl, "read_database", lambda *a, **k: pytest.fail("SQLite files load through ADBC"))

    loaded = curation.load_interactions(any_store).collect()
    newer = curation.load_interactions(any_store, since=T0 + timedelta(minutes=3)).collect()

    assert loaded.schema == pl.Schema(frames.INTERACTIONS_SCHEMA)
    stored = list(any_store.iter_interactions())
    expected = {
        r.id: (r.created_at.replace(tzinfo=UTC), r.user_hash, r.prompt, r.response, r.pii_types, r.helpful, r.regenerated)
        for r in stored
    }
    got = {
        row[curation.ID]: (row[curation.CREATED], row[curation.USER], row[curation.PROMPT], row[curation.RESPONSE],
                           json.loads(row[curation.PII]), row[curation.HELPFUL], row[curation.REGENERATED])
        for row in loaded.iter_rows(named=True)
    }
    assert got == expected and len(got) == 7
    assert sum(v[1] is None for v in got.values()) == 3 and any(v[4] for v in got.values())
    assert sorted(newer[curation.ID].to_list()) == sorted(r.id for r in stored if r.created_at.replace(tzinfo=UTC) > T0 + timedelta(minutes=3))


TEXTS = [
    ("Hello,   World!!", "Sure! The dock opens at 7:00."),
    ("hello world", "sure the dock opens at 700"),
    ("???", "Only punctuation in the prompt."),
    ("Tabs\tand\nnewlines", "   leading and trailing   "),
    ("Ünïcödé WÖRDS — ça va?", "Σίσυφος ΣΟΦΟΣ, naïve café"),
    ("nbsp\u00a0 inside", "a\u00a0\u00a0b"),
    ("", "empty prompt"),
    ("same words twice twice", "twice same words"),
    ("x\t\ty -- z", "\u3000ideographic space\u2028line separator "),
    ("ΤΕΛΟΣ ΟΔΟΣ", "plain ascii answer with  two spaces"),
]


def test_the_cheap_spacing_test_misses_no_row_the_pattern_changes() -> None:
    import re

    ascii_chars = pl.Series([chr(i) for i in range(128)])
    changed = ascii_chars.str.contains(text._SPACING)
    assert ascii_chars.filter(changed).to_list() == ["\t", "\n", "\x0b", "\x0c", "\r"]  # \s here is Unicode's
    texts = pl.Series(["a b", "a  b", "a\tb", "a\u00a0b", "ab ", "a\u2003", "é", "plain words"])
    may_need = pl.select(text._may_need_spacing(pl.lit(texts))).to_series()
    assert may_need.to_list() == [False, True, True, True, False, True, True, False]
    respaced = text._respace(texts, may_need)
    assert respaced.to_list() == [re.sub(r"[^\S ]|\s{2,}", " ", t) for t in texts]


def test_chunked_fingerprints_equal_text_key_and_datasketch(monkeypatch: pytest.MonkeyPatch) -> None:
    from datasketch import MinHash

    monkeypatch.setattr(dedup, "_FINGERPRINT_CHUNK_ROWS", 3)  # several chunks, on threads
    monkeypatch.setattr(dedup, "_THREADS", 2)
    prompts, responses = (pl.Series([t[i] for t in TEXTS]) for i in (0, 1))

    keys, signatures = curation.fingerprints(prompts, responses)

    frame = pl.DataFrame({"p": prompts, "r": responses})
    assert keys.to_list() == frame.select(curation.text_key(pl.col("p"), pl.col("r"))).to_series().to_list()
    norm = frame.select(
        pl.concat_str([curation.normalise(pl.col("p")), curation.normalise(pl.col("r"))], separator=" ")
    ).to_series()
    hashes, starts = curation.shingle_hashes(norm)
    ends = [*starts[1:], len(hashes)]
    for row, (start, end) in enumerate(zip(starts, ends, strict=True)):
        reference = MinHash(num_perm=curation.NUM_PERM, seed=curation.MINHASH_SEED, hashfunc=int)
        reference.update_batch([int(h) for h in hashes[start:end]])
        assert np.array_equal(signatures[row], reference.hashvalues), TEXTS[row]
    assert np.array_equal(signatures, curation.minhash_signatures(norm, *curation.minhash_parameters(0.85)[:2]))
    assert keys[0] == keys[1]  # normalisation makes the first two exact duplicates


def test_near_duplicate_mask_follows_the_rank_not_the_row_order() -> None:
    rng = np.random.default_rng(3)
    base = rng.integers(0, 2**32, size=(40, curation.NUM_PERM), dtype=np.uint32)
    rows = [base[i % 40].copy() for i in range(200)]  # 5 copies of each of 40 texts ...
    for i, row in enumerate(rows):
        row[rng.choice(curation.NUM_PERM, size=i % 12, replace=False)] = rng.integers(0, 2**32, size=i % 12)  # ... edited
    signatures = np.stack(rows)
    rank = rng.permutation(len(signatures)).astype(np.uint32)
    by_rank = np.argsort(rank)

    for threshold in (0.5, 0.85, 0.95):
        in_rank_order = curation.duplicate_mask(signatures[by_rank], threshold)
        expected = np.empty_like(in_rank_order)
        expected[by_rank] = in_rank_order
        assert np.array_equal(curation.duplicate_mask(signatures, threshold, rank), expected)
        assert 0 < expected.sum() < len(signatures)
    assert not curation.duplicate_mask(signatures, 0.85, rank)[by_rank[0]]  # the best row is always kept


def test_keep_rows_moves_the_kept_rows_forward_in_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedup, "_FINGERPRINT_CHUNK_ROWS", 7)
    values = np.arange(1_000 * 4, dtype=np.uint32).reshape(1_000, 4)
    original = values.copy()
    kept = np.flatnonzero(np.random.default_rng(5).random(1_000) < 0.6)
    moved = dedup._keep_rows(values, kept)
    assert np.array_equal(moved, original[kept]) and np.shares_memory(moved, values)


def test_rows_come_out_in_creation_order_whatever_order_they_were_stored_in(settings: Settings) -> None:
    store = Store.from_settings(settings)
    ingestor = Ingestor(settings, store)
    minutes = [5, 1, 4, 2, 3, 0]  # stored in this order, created in another
    for i, minute in enumerate(minutes):
        ingestor.ingest_interaction(
            prompt=f"Which shelf holds item {i} of the spring catalogue?",
            response=f"Item {i} sits on shelf {i * 7}, aisle {i + 2}, next to the {['tea', 'oats', 'jam', 'rye', 'figs', 'salt'][i]}.",
            timestamp=T0 + timedelta(minutes=minute),
        )
    rows, counts = curation.curate_frame(curation.load_interactions(store), settings)
    store.close()
    assert counts["final"] == len(minutes)
    expected = [i for _, i in sorted((minute, i) for i, minute in enumerate(minutes))]
    assert rows[curation.PROMPT].to_list() == [f"Which shelf holds item {i} of the spring catalogue?" for i in expected]


def test_adbc_never_opens_the_store_beside_the_stores_own_sqlite(settings: Settings, tmp_path) -> None:
    """Two SQLite libraries in one process break each other's file locks: the ADBC read runs
    in a child, so the curating process never maps ADBC's SQLite; a failed read says why."""
    import sqlite3
    import subprocess
    import sys

    from cl_assets.core.store.arrow_reader import ArrowReadError, read_query

    store = Store.from_settings(settings)
    Ingestor(settings, store).ingest_interaction(prompt="Where is the warehouse?", response="In Bangor.", helpful=True)
    store.close()
    code = (
        "import sys; from cl_assets.core import curation; from cl_assets.core.store import Store; "
        "from cl_assets.settings import Settings; "
        f"store = Store.from_settings(Settings(_env_file=None, home={str(settings.home)!r}, "
        f"user_hash_salt={settings.user_hash_salt.get_secret_value()!r})); "
        "frame = curation.load_interactions(store).collect(); "
        "maps = open('/proc/self/maps').read(); "
        "print(frame.height, 'libadbc_driver_sqlite' in maps, 'adbc_driver_sqlite' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["1", "False", "False"]

    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.close()
    assert read_query(other, "SELECT x FROM t", None, busy_timeout_ms=100, batch_rows=10).height == 0
    with pytest.raises(ArrowReadError, match="no such table"):
        read_query(other, "SELECT * FROM missing_table", None, busy_timeout_ms=100, batch_rows=10)


def test_adbc_reader_streams_parts_of_every_query_side_by_side(tmp_path) -> None:
    """Each query's result comes in parts converted as they arrive, reassembled in row order and
    finished whole; one failing query fails all."""
    import sqlite3

    from cl_assets.core.store.arrow_reader import ArrowReadError, read_queries

    path = tmp_path / "parts.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE t (n INTEGER, word TEXT)")
    db.executemany("INSERT INTO t VALUES (?, ?)", [(n, f"word {n}") for n in range(25)])
    db.commit()
    seen: list[int] = []

    def tag(frame: pl.DataFrame) -> pl.DataFrame:
        seen.append(frame.height)
        return frame.with_columns(pl.col("word").str.to_uppercase())

    first, second = read_queries(path, [("SELECT n, word FROM t ORDER BY n", None), ("SELECT count(*) AS c FROM t", None)],
                                 busy_timeout_ms=100, batch_rows=4, part_rows=8, convert=[tag, lambda f: f],
                                 finish=[lambda whole: whole.with_columns(total=pl.col("n").sum()), None])  # fmt: skip
    assert first["n"].to_list() == list(range(25)) and first["word"][24] == "WORD 24"
    assert first["total"].unique().to_list() == [300]  # `finish` saw the whole result, once
    assert sorted(seen) == [1, 8, 8, 8] and first.n_chunks() == 1  # parts of >= 8 rows (batches of 4), one chunk
    assert second["c"].to_list() == [25]
    [empty] = read_queries(path, [("SELECT n FROM t WHERE n < 0", None)], busy_timeout_ms=100, batch_rows=4)
    assert empty.height == 0 and empty.columns == ["n"]
    with pytest.raises(ArrowReadError, match="no such table"):
        read_queries(path, [("SELECT n FROM t", None), ("SELECT * FROM missing", None)], busy_timeout_ms=100, batch_rows=4)
    db.close()
