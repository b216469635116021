"""Near-duplicates: MinHash signatures of each turn's words, LSH banding, best copy kept."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import polars as pl

from cl_assets.core.curation.columns import (
    KEY,
    NORM_PROMPT,
    NORM_RESPONSE,
    PROMPT,
    RESPONSE,
    WORDS,
)
from cl_assets.core.curation.text import (
    _may_need_spacing,
    _pair_key,
    _respace,
    _without_punctuation,
)

# MinHash over the words of a turn, 64 permutations (Jaccard estimates within about ±0.05
# around the usual 0.85 threshold), LSH banding chosen by datasketch.
NUM_PERM = 64
MINHASH_SEED = 1
_FINGERPRINT_CHUNK_ROWS = 10_000  # rows normalised and hashed at once: ~2 KB of temporaries a row
_CACHE_BLOCK = 1 << 16  # hashes per block of _apply_permutations
_PAIR_CHUNK = 50_000  # candidate pairs compared at once (2 × 256 bytes each)
# Threads for the chunked fingerprints: Polars' collect and numpy's ufuncs release the GIL.
_THREADS = max(1, min(4, pl.thread_pool_size()))
_HIGH_HALF = 1 if sys.byteorder == "little" else 0  # index of a uint64's upper half among its two uint32s

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
                _words(pl.concat_str([NORM_PROMPT, NORM_RESPONSE], separator=" ")).alias(WORDS),
            )
            .collect()
        )
        keys[start:stop] = normalised[KEY].to_numpy()
        hashes, row_starts = _hashed_words(normalised[WORDS])
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
