"""A writer of the concurrency test, run in a thread or as its own process.

`python -m tests.reliability.workers NAME N SHARED_JSONL READY GO` (settings from `CL_*`):
signals READY, waits for GO, then ingests N turns one by one, rates each, and imports the
shared JSONL file that every process writer imports at the same time. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from cl_assets.core.ingest import Ingestor
from cl_assets.settings import Settings


def turn(name: str, i: int) -> dict[str, Any]:
    return {
        "id": f"{name}-{i}",
        "user_id": f"user-{name}",
        "session_id": f"sess-{name}",
        "prompt": f"Writer {name} asks question number {i}: where is lot {i}?",
        "response": f"Lot {i} is on shelf {name}-{i}; it ships tomorrow.",
        "source": "chat",
    }


def shared_lines(m: int) -> list[str]:
    """Lines that every process writer imports at once (half of them rated)."""
    return [
        json.dumps({"id": f"shared-{i}", "user_id": f"shared-user-{i % 5}", "prompt": f"Shared question {i}?",
                    "response": f"Shared answer {i}.", "helpful": (i % 2 == 0) if i % 4 else None})
        for i in range(m)
    ]


def write(ingestor: Ingestor, name: str, n: int, shared: Path | None) -> dict[str, Any]:
    """The writer's work; returns what it did (ids, counts) for the parent to check."""
    ids = []
    for i in range(n):
        stored = ingestor.ingest_interaction(**turn(name, i))
        ingestor.record_feedback(stored.id, i % 2 == 0)
        ids.append(stored.id)
    report = ingestor.import_jsonl(shared).as_dict() if shared else None
    return {"name": name, "ids": ids, "import": report}


def main(argv: list[str]) -> int:
    name, n, shared, ready, go = argv[0], int(argv[1]), argv[2], Path(argv[3]), Path(argv[4])
    try:
        ingestor = Ingestor(Settings())
        ready.touch()
        deadline = time.monotonic() + 300
        while not go.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the parent never said go")
            time.sleep(0.01)
        result = write(ingestor, name, n, Path(shared) if shared != "-" else None)
    except BaseException:  # the parent shows it
        traceback.print_exc()
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
