"""Concurrency: 16 writers (8 threads, 8 processes) ingest, rate and import at once while
curations run, on SQLite and on PostgreSQL. No row is lost or duplicated, no error (such as
"database is locked") reaches a writer, and every curation succeeds."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cl_assets.core.curation import curate_snapshot
from cl_assets.core.ingest import Ingestor
from cl_assets.core.store import FeedbackEvent, Interaction, Store
from cl_assets.settings import Settings
from tests.conftest import REPO
from tests.reliability.support import child_env
from tests.reliability.workers import shared_lines, write

THREADS, PROCESSES, PER_WRITER, SHARED = 8, 8, 15, 40


def test_sixteen_writers_and_a_curation_lose_and_duplicate_nothing(any_db_settings: Settings, tmp_path: Path) -> None:
    settings = any_db_settings
    store = Store.from_settings(settings)
    Ingestor(settings, store)  # schema and salt fingerprint exist before the crowd arrives
    shared = tmp_path / "shared.jsonl"
    shared.write_text("\n".join(shared_lines(SHARED)) + "\n")
    go = tmp_path / "go"

    procs = []
    for p in range(PROCESSES):
        ready = tmp_path / f"ready-{p}"
        cmd = [sys.executable, "-m", "tests.reliability.workers", f"p{p}", str(PER_WRITER), str(shared), str(ready), str(go)]
        procs.append((subprocess.Popen(cmd, cwd=REPO, env=child_env(settings), stdout=subprocess.PIPE,
                                       stderr=subprocess.PIPE, text=True), ready))
    deadline = time.monotonic() + 300
    while not all(ready.exists() for _, ready in procs):  # all imported and connected: start together
        assert all(proc.poll() is None for proc, _ in procs), [proc.communicate() for proc, _ in procs if proc.poll() is not None]
        assert time.monotonic() < deadline, "process writers did not start"
        time.sleep(0.05)

    errors: list[str] = []
    results: list[dict[str, Any]] = []
    curations: list[int] = []
    writers_done = threading.Event()

    def thread_writer(t: int) -> None:
        try:
            results.append(write(Ingestor(settings, store), f"t{t}", PER_WRITER, None))
        except BaseException as exc:  # surfaced below
            errors.append(f"thread {t}: {type(exc).__name__}: {exc}")

    def curator() -> None:
        number = 0
        try:
            while not writers_done.is_set() or number < 2:
                number += 1
                snap = curate_snapshot(settings, store, snapshot_id=f"20261201_{number:06d}")
                curations.append(snap.n_rows)
        except BaseException as exc:
            errors.append(f"curation {number}: {type(exc).__name__}: {exc}")

    go.touch()
    threads = [threading.Thread(target=thread_writer, args=(t,)) for t in range(THREADS)]
    curating = threading.Thread(target=curator)
    for th in [*threads, curating]:
        th.start()
    for th in threads:
        th.join()
    outputs = []
    for proc, _ in procs:
        out, err = proc.communicate(timeout=600)
        outputs.append(out + err)
        if proc.returncode != 0:
            errors.append(f"process writer failed:\n{err[-3000:]}")
        else:
            results.append(json.loads(out.strip().splitlines()[-1]))
    writers_done.set()
    curating.join()

    assert errors == []
    assert not any("locked" in o.lower() for o in outputs)
    assert len(results) == THREADS + PROCESSES and len(curations) >= 2

    # Every single turn is there exactly once, with its one rating mirrored.
    expected = {f"{r['name']}-{i}" for r in results for i in range(PER_WRITER)} | {f"shared-{i}" for i in range(SHARED)}
    with store.read() as s:
        rows = {row.id: row.helpful for row in s.scalars(select(Interaction))}
        events = s.execute(select(FeedbackEvent.interaction_id, func.count()).group_by(FeedbackEvent.interaction_id)).all()
    assert set(rows) == expected and store.count_interactions() == len(expected)
    for r in results:
        assert [rows[i] for i in r["ids"]] == [n % 2 == 0 for n in range(PER_WRITER)]
    # One feedback event per rating: one per single turn, one per rated shared line (never one per importer).
    rated_shared = sum(1 for line in shared_lines(SHARED) if json.loads(line)["helpful"] is not None)
    assert dict(events) == {i: 1 for i in expected if not i.startswith("shared-") or rows[i] is not None}
    assert sum(n for _, n in events) == (THREADS + PROCESSES) * PER_WRITER + rated_shared
    # The shared file was imported by 8 processes at once: accepted once in all, duplicate 7 times.
    imports = [r["import"] for r in results if r["import"]]
    assert sum(i["accepted"] for i in imports) == SHARED and sum(i["duplicates"] for i in imports) == SHARED * (PROCESSES - 1)
    # Each curation saw a consistent state: never more rows than were stored.
    assert all(0 <= n <= len(expected) for n in curations)
    assert [s.n_rows for s in store.list_snapshots()] == curations
