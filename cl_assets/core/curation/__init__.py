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

Modules, in the order the data flows: `columns` (names), `text` (normalisation), `context`
(each row's conversation walked from the stored message tree), `dedup` (MinHash/LSH),
`filters` (the steps; `curate_frame`, and `curate_rows`, which leaves the lines' contexts to be
encoded as they are written), `replay` (earlier snapshots mixed in), `writing` (the snapshot
file and its registry row). Loading is the store's
(`store.frames`), the snapshot format `core.snapshot`'s.
"""

from cl_assets.core.curation.columns import (
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
    USER,
)
from cl_assets.core.curation.dedup import (
    MINHASH_SEED,
    NUM_PERM,
    duplicate_mask,
    fingerprints,
    minhash_parameters,
    minhash_signatures,
    near_duplicate_mask,
    shingle_hashes,
)
from cl_assets.core.curation.filters import (
    COUNT_KEYS,
    add_replay,
    cap_per_user,
    curate_frame,
    curation_steps,
    drop_control_tokens,
    drop_exact_duplicates,
    drop_near_duplicates,
    drop_pii,
    drop_unhelpful,
    keep_length,
    rank,
)
from cl_assets.core.curation.replay import ReplaySourceError, replay_pool
from cl_assets.core.curation.text import normalise, text_key
from cl_assets.core.curation.writing import (
    NothingToCurateError,
    SnapshotExistsError,
    SnapshotResult,
    chatml_lines,
    curate_snapshot,
)
from cl_assets.core.store.frames import load_interactions

__all__ = [
    "COUNT_KEYS",
    "CREATED",
    "HELPFUL",
    "ID",
    "KEY",
    "LABEL",
    "MINHASH_SEED",
    "NUM_PERM",
    "PII",
    "PROMPT",
    "RANK",
    "REGENERATED",
    "REPLAY_FROM",
    "RESPONSE",
    "NEAR_DUPLICATE",
    "USER",
    "NothingToCurateError",
    "ReplaySourceError",
    "SnapshotExistsError",
    "SnapshotResult",
    "add_replay",
    "cap_per_user",
    "chatml_lines",
    "curate_frame",
    "curate_snapshot",
    "curation_steps",
    "drop_control_tokens",
    "drop_exact_duplicates",
    "drop_near_duplicates",
    "drop_pii",
    "drop_unhelpful",
    "duplicate_mask",
    "fingerprints",
    "keep_length",
    "load_interactions",
    "minhash_parameters",
    "minhash_signatures",
    "near_duplicate_mask",
    "normalise",
    "rank",
    "replay_pool",
    "shingle_hashes",
    "text_key",
]
