"""Column names of curation's frames, defined once (the loaded ones are the store's)."""

from cl_assets.core.store.frames import (
    CONTEXT,
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
SIGNATURE = "_signature"  # MinHash of the words of the normalised prompt + response
NORM_PROMPT, NORM_RESPONSE = "_norm_prompt", "_norm_response"
WORDS = "_words"
REPLAY_FROM = "_replay_from"  # snapshot id a replayed row came from (null: a new row)
SUPERSEDED = "_superseded"  # a newer 👍 answer to the same question exists (`drop_superseded`)

__all__ = [
    "CONTEXT", "CREATED", "HELPFUL", "ID", "KEY", "LABEL", "NORM_PROMPT", "NORM_RESPONSE", "PII", "PROMPT", "RANK",
    "REGENERATED", "REPLAY_FROM", "RESPONSE", "SIGNATURE", "SUPERSEDED", "USER", "WORDS",
]  # fmt: skip
