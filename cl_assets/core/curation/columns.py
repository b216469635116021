"""Column names of curation's frames, defined once (the loaded ones are the store's)."""

from cl_assets.core.store.frames import (
    CONTEXT,
    CONTEXT_AT,
    CREATED,
    HELPFUL,
    ID,
    PII,
    PROMPT,
    REGENERATED,
    RESPONSE,
    USER,
)

LABEL = "label"  # KTO: desirable (true) or not (false)
RANK = "_rank"  # 0 = best; see the package docstring
KEY = "_key"  # hash of the normalised prompt and response
NEAR_DUPLICATE = "_near_duplicate"  # a MinHash near-duplicate of a better-ranked row (`drop_exact_duplicates`)
NORM_PROMPT, NORM_RESPONSE = "_norm_prompt", "_norm_response"
WORDS = "_words"
REPLAY_FROM = "_replay_from"  # snapshot id a replayed row came from (null: a new row)
SUPERSEDED = "_superseded"  # a newer 👍 answer to the same question exists (`drop_superseded`)

__all__ = [
    "CONTEXT", "CONTEXT_AT", "CREATED", "HELPFUL", "ID", "KEY", "LABEL", "NORM_PROMPT", "NORM_RESPONSE", "PII", "PROMPT", "RANK",
    "REGENERATED", "REPLAY_FROM", "NEAR_DUPLICATE", "RESPONSE", "SUPERSEDED", "USER", "WORDS",
]  # fmt: skip
