"""Big stores for the curation and sensor benchmarks, written in bulk and cached.

`Store.insert_interactions` is the ingestion API and is measured by the ingestion benchmark;
a million rows through it would only slow the set-up down. Here the schema is made by the
`Store` itself (Alembic), and rows go in with the sqlite3 driver's `executemany`, in the
exact formats SQLAlchemy writes (UTC timestamps as `YYYY-MM-DD HH:MM:SS.ffffff`, booleans as
0/1, JSON as text). `tests/bench` checks that a bulk-written store and one filled through
`Store.insert_interactions` curate to the same counts.

What the rows look like (seeded): chat turns of 40-200 (prompt) and 80-700 (response)
characters from a 6,000-word vocabulary; users with a heavy tail (some exceed the per-user
cap); 45% unrated, 35% 👍, 15% 👎, 5% regenerated; 2% with PII found (placeholders in the
text); 5% exact and 3% near duplicates of earlier rows; a feedback event for every rated row.

With `context=True` every session (five consecutive turns, one user) is a conversation: each
turn's `context_id` points into the `messages` tree (system prompt, the session's earlier
turns, its own prompt), written as the ingestor writes it (`core.conversation.message_id`):
about two new messages a turn, the prefix shared.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from common import REPO

FORMAT_VERSION = 2  # bump when the generator changes: cached stores are rebuilt
CACHE = Path(os.environ.get("CL_BENCH_CACHE", REPO / "data" / "bench" / "cache"))
START = datetime(2026, 1, 1, tzinfo=UTC)

_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ze", "pra", "sto", "gle", "an", "or", "is", "um",
              "bel", "dor", "fin", "hal", "jor", "ket", "lum", "mar", "nes", "pol", "qui", "ris", "sun", "tor"]
_FRAMES_PROMPT = ["How do I {w}?", "What is the {w} of {w}?", "Can you explain {w} {w}?", "Is {w} better than {w}?",
                  "Why does my {w} keep {w}?", "Where can I find {w}?", "Please help with {w} and {w}."]
_FRAMES_RESPONSE = ["Sure! {w}.", "The short answer is {w}. {w}.", "{w}. In most cases {w}.",
                    "Good question. {w}, and {w}.", "You can {w}. Then {w}."]


def _vocabulary(rng: random.Random, n: int = 6_000) -> list[str]:
    words: set[str] = set()
    while len(words) < n:
        words.add("".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4))))
    return sorted(words)


def _phrase(rng: random.Random, vocab: list[str], lo: int, hi: int) -> str:
    return " ".join(rng.choices(vocab, k=rng.randint(lo, hi)))


def _fill(rng: random.Random, vocab: list[str], frame: str, lo: int, hi: int) -> str:
    parts = frame.split("{w}")
    out = [parts[0]]
    for part in parts[1:]:
        out.append(_phrase(rng, vocab, lo, hi))
        out.append(part)
    return "".join(out)


def _ts(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


SYSTEM_PROMPT = "You are the support assistant of Harbor & Pine Provisions. Answer briefly and precisely."
SESSION_TURNS = 5


def generate_rows(n: int, seed: int = 11) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(interaction rows, feedback rows) as tuples in the column order of `_INSERT*`."""
    rng = random.Random(seed)
    vocab = _vocabulary(rng)
    users = [f"{rng.getrandbits(256):064x}" for _ in range(max(10, n // 50))]
    # Heavy tail: a few users write most turns (the per-user cap has work to do).
    weights = [1.0 / (i + 1) ** 0.8 for i in range(len(users))]
    chosen_users = rng.choices(users, weights=weights, k=n)
    rows: list[tuple[Any, ...]] = []
    feedback: list[tuple[Any, ...]] = []
    step = timedelta(seconds=max(1, int(300 * 86_400 / max(n, 1))))
    for i in range(n):
        created = START + step * i
        r = rng.random()
        if i > 100 and r < 0.05:  # exact duplicate of an earlier turn (other user, other time)
            prompt, response = rows[rng.randrange(i)][5:7]
        elif i > 100 and r < 0.08:  # near duplicate: a stylistic prefix or one word changed
            prompt, response = rows[rng.randrange(i)][5:7]
            words = response.split(" ")
            if rng.random() < 0.5 and len(words) > 12:
                words[rng.randrange(len(words))] = rng.choice(vocab)
                response = " ".join(words)
            else:
                response = "Sure! " + response
        else:
            prompt = _fill(rng, vocab, rng.choice(_FRAMES_PROMPT), 2, 12)
            response = _fill(rng, vocab, rng.choice(_FRAMES_RESPONSE), 6, 40)
        pii = "[]"
        if rng.random() < 0.02:
            kind = rng.choice(["EMAIL", "PHONE", "IBAN"])
            prompt = f"{prompt} my {kind.lower()} is [{kind}]"
            pii = json.dumps([kind])
        f = rng.random()
        helpful = None if f < 0.45 else (1 if f < 0.80 else (0 if f < 0.95 else None))
        regenerated = 1 if f >= 0.95 else 0
        feedback_at = _ts(created + timedelta(seconds=30)) if helpful is not None or regenerated else None
        row_id = f"{i:08d}-{rng.getrandbits(64):016x}"
        rows.append((
            row_id, _ts(created), _ts(created), f"s{i // 5}", chosen_users[i], prompt, response, pii, "chat",
            "smollm2-135m-instruct", None, 900.0, 120.0, 40, 60, 30.0, helpful, regenerated, feedback_at,
        ))
        if helpful is not None:
            feedback.append((row_id, helpful, "explicit", feedback_at))
        elif regenerated:
            feedback.append((row_id, 0, "regenerate", feedback_at))
    return rows, feedback


_INSERT = (
    "INSERT INTO interactions (id, created_at, ingested_at, session_id, user_hash, prompt, response, pii_types, "
    "source, model_version, adapter_version, latency_ms, ttft_ms, prompt_tokens, completion_tokens, tokens_per_s, "
    "helpful, regenerated, feedback_at) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_INSERT_FEEDBACK = "INSERT INTO feedback_events (interaction_id, helpful, kind, created_at) VALUES (?,?,?,?)"
_INSERT_MESSAGE = "INSERT OR IGNORE INTO messages (id, parent_id, role, content, pii_types, user_hash, weight) VALUES (?,?,?,?,?,?,?)"


def add_contexts(rows: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """(rows with their session's user and a `context_id` appended, the messages they point to)."""
    from cl_assets.core.conversation import message_id

    out: list[tuple[Any, ...]] = []
    messages: list[tuple[Any, ...]] = []
    systems: dict[str, str] = {}
    previous: str | None = None  # the previous turn's context id, within a session
    for i, row in enumerate(rows):
        first = i % SESSION_TURNS == 0
        user = row[4] if first else out[-1][4]
        prompt = row[5]
        if first:
            parent = systems.get(user)
            if parent is None:
                parent = systems[user] = message_id(None, user, "system", SYSTEM_PROMPT)
                messages.append((parent, None, "system", SYSTEM_PROMPT, "[]", user, None))
        else:
            answer = out[-1][6]
            parent = message_id(previous, user, "assistant", answer)
            messages.append((parent, previous, "assistant", answer, "[]", user, None))
        context = message_id(parent, user, "user", prompt)
        messages.append((context, parent, "user", prompt, row[7], user, None))
        out.append((*row[:4], user, *row[5:], context))
        previous = context
    return out, messages


def as_api_rows(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """The same rows as `Store.insert_interactions` takes them (for the equivalence test)."""
    out = []
    for r in rows:
        def when(text: str | None) -> datetime | None:
            return datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=UTC) if text else None

        out.append({
            "id": r[0], "created_at": when(r[1]), "ingested_at": when(r[2]), "session_id": r[3], "user_hash": r[4],
            "prompt": r[5], "response": r[6], "pii_types": json.loads(r[7]), "source": r[8], "model_version": r[9],
            "adapter_version": r[10], "latency_ms": r[11], "ttft_ms": r[12], "prompt_tokens": r[13],
            "completion_tokens": r[14], "tokens_per_s": r[15], "helpful": None if r[16] is None else bool(r[16]),
            "regenerated": bool(r[17]), "feedback_at": when(r[18]),
        })
    return out


def write_store(path: Path, n: int, seed: int = 11, context: bool = False) -> dict[str, Any]:
    """Create a migrated SQLite store at `path` holding `n` generated interactions."""
    from cl_assets.core.store import Store

    path.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    store = Store(f"sqlite:///{path}")  # schema through Alembic, as the platform makes it
    store.close()
    rows, feedback = generate_rows(n, seed)
    messages: list[tuple[Any, ...]] = []
    insert = _INSERT
    if context:
        rows, messages = add_contexts(rows)
        insert = _INSERT.replace("feedback_at)", "feedback_at, context_id)").replace("?)", "?,?)")
    generated = time.perf_counter() - started
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA synchronous=OFF")
        with conn:
            for start in range(0, len(messages), 100_000):
                conn.executemany(_INSERT_MESSAGE, messages[start : start + 100_000])
            for start in range(0, len(rows), 100_000):
                conn.executemany(insert, rows[start : start + 100_000])
            conn.executemany(_INSERT_FEEDBACK, feedback)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"rows": n, "feedback_events": len(feedback), "messages": len(messages), "generate_s": generated,
            "write_s": time.perf_counter() - started - generated, "bytes": path.stat().st_size}


def cached_store(n: int, seed: int = 11, context: bool = False) -> Path:
    """A store with `n` rows under the bench cache, built once per generator version."""
    path = CACHE / f"store_{n}_s{seed}_v{FORMAT_VERSION}{'_ctx2' if context else ''}.db"  # ctx2: with ix_interactions_context_id
    if not path.is_file():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        write_store(tmp, n, seed, context)
        for suffix in ("-wal", "-shm"):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)
        tmp.rename(path)
    return path
