"""Learning events: a row in the store and a line in `logs/learning_events.jsonl` for people.

Payloads carry counts, ids and paths only, never interaction text.
"""

from __future__ import annotations

import json
from typing import Any
from cl_assets.settings import Settings


def record_event(settings: Settings, store: Any, kind: str, **payload: Any) -> None:
    row = store.add_learning_event(kind, payload)
    path = settings.learning_events_path
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": row.created_at.isoformat(), "kind": kind, **payload}, default=str, sort_keys=True)
    with path.open("a", encoding="utf-8") as fh:  # one short append per event
        fh.write(line + "\n")
