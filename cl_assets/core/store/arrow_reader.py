"""Read queries' results from a SQLite file into Polars through ADBC, in a child process.

Why a child: ADBC's SQLite driver links its own copy of the SQLite library. Two copies of
SQLite in one process do not see each other's POSIX advisory locks, and closing a file in
one copy silently drops the locks the other holds on it (sqlite.org/howtocorrupt.html §2.2),
which lets another process write into a transaction this process believes it holds. The
store's own connections use Python's sqlite3, so ADBC must never open the file beside them.

The child runs every query at once, each on its own read-only connection and thread (ADBC and
pyarrow release the GIL while they read and write), and streams each result in parts of
`part_rows` rows into Arrow IPC files in a private temporary folder, naming each part on its
stdout when it is complete; the parent maps, converts and deletes each part as it arrives, so
neither side ever holds a whole result in Arrow form beside its converted copy. Consistency
across the queries: each later query's read transaction starts after the earlier one's
(SQLite WAL snapshots), so it sees at least everything the earlier one saw, and rows that a
later query finds missing were deleted in between (the caller decides what that means).
Starting the child costs about 0.3 s; it saves seconds of Python objects per million rows
(see docs/benchmarks.md).

The child runs this file as a script (`python -P arrow_reader.py DB QUERIES OUT TIMEOUT BATCH PART`),
so it imports pyarrow and ADBC only, not the `cl_assets` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import polars as pl

Convert = Callable[[pl.DataFrame], pl.DataFrame]


class ArrowReadError(RuntimeError):
    """The child process could not read the database."""


def read_queries(
    database: Path,
    queries: Sequence[tuple[str, str | None]],
    *,
    busy_timeout_ms: int,
    batch_rows: int,
    part_rows: int = 100_000,
    convert: Sequence[Convert] | None = None,
    finish: Sequence[Convert | None] | None = None,
) -> list[pl.DataFrame]:
    """Run each `(sql, since)` (one optional `?` parameter, bound to `since`) on the SQLite file
    `database`, all at once (see the module docstring for what they see); returns each result,
    its parts passed through `convert[i]` (default: as read) as they arrive, in row order, then
    the whole through `finish[i]` (default: none), on a thread of its own as soon as that result
    is complete, while the others still arrive.

    `batch_rows`: rows per Arrow batch; ADBC types each column by its first batch, so a
    conversion must accept a column typed otherwise (an empty result's are integers)."""
    converters = list(convert) if convert is not None else [lambda frame: frame] * len(queries)
    finishers = list(finish) if finish is not None else [None] * len(queries)
    # mode 0700: only this user reads it; in memory (tmpfs) where the system has one, as each
    # part is mapped at once: a disk would only add write-back of a file about to go.
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    parts: list[list[pl.DataFrame]] = [[] for _ in queries]
    with tempfile.TemporaryDirectory(prefix="cl-arrow-", dir=where) as tmp:
        errors = Path(tmp) / "stderr.txt"
        spec = json.dumps([[sql, since or None] for sql, since in queries])
        # The file as a script (-P: its folder not on sys.path): imports pyarrow and ADBC only.
        cmd = [sys.executable, "-P", __file__, str(database), spec, tmp, str(busy_timeout_ms), str(batch_rows),
               str(part_rows)]  # fmt: skip
        with errors.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip

        def failed() -> ArrowReadError:
            proc.wait()
            why = " / ".join(errors.read_text().strip().splitlines()[-3:]) or "no output"
            return ArrowReadError(f"reading {database} failed (exit {proc.returncode}): {why[-2000:]}")

        finishing = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cl-arrow-finish")
        done: dict[int, Future[pl.DataFrame]] = {}
        try:
            assert proc.stdout is not None
            ended: dict[int, int] = {}
            while len(ended) < len(queries):
                words = proc.stdout.readline().split()
                if len(words) == 3 and words[1] == "end":  # "<query> end <parts>"
                    index = int(words[0])
                    ended[index] = int(words[2])
                    if ended[index] == len(parts[index]):
                        whole, parts[index] = _whole(parts[index]), []
                        done[index] = finishing.submit(finishers[index] or (lambda frame: frame), whole)
                        del whole
                    continue
                if len(words) != 2:
                    raise failed()
                index, part = (int(word) for word in words)
                if part != len(parts[index]):
                    raise ArrowReadError(f"reading {database}: part {part} of query {index} came out of order")
                path = Path(tmp) / f"{index}.{part}.arrow"
                frame = pl.read_ipc(path)  # copied out, compact: the file's pages go with it
                path.unlink()
                assert isinstance(frame, pl.DataFrame)
                parts[index].append(converters[index](frame))
                del frame
            if proc.wait() != 0 or len(done) < len(queries):
                raise failed()
            return [done[i].result() for i in range(len(queries))]
        finally:
            finishing.shutdown(wait=True, cancel_futures=True)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]


def _whole(parts: list[pl.DataFrame]) -> pl.DataFrame:
    # One chunk per column: concatenating string views joins their buffers, no text is copied.
    return pl.concat(parts, rechunk=True)


def read_query(database: Path, sql: str, since: str | None, *, busy_timeout_ms: int, batch_rows: int) -> pl.DataFrame:
    """One query's result (see `read_queries`)."""
    [frame] = read_queries(database, [(sql, since)], busy_timeout_ms=busy_timeout_ms, batch_rows=batch_rows)
    return frame


def _child(database: str, spec: str, out: str, busy_timeout_ms: str, batch_rows: str, part_rows: str) -> None:
    import threading
    import traceback

    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa
    import pyarrow.ipc

    uri = f"{Path(database).resolve().as_uri()}?mode=ro"
    queries = json.loads(spec)
    said = threading.Lock()
    begun = [threading.Event() for _ in queries]
    failures: list[int] = []

    def say(line: str) -> None:
        with said:
            print(line, flush=True)

    def read(index: int, sql: str, since: str | None) -> None:
        try:
            with adbc_driver_sqlite.connect(uri) as db, adbc_driver_manager.AdbcConnection(db) as conn:
                with adbc_driver_manager.AdbcStatement(conn) as pragma:
                    pragma.set_sql_query(f"PRAGMA busy_timeout={int(busy_timeout_ms):d}")
                    pa.RecordBatchReader.from_stream(pragma.execute_query()[0]).read_all()
                # Off autocommit, the driver opens a transaction; its first read fixes its snapshot.
                conn.set_options(**{"adbc.connection.autocommit": "false"})
                if index:
                    begun[index - 1].wait()  # after the earlier query's snapshot: never an older one
                with adbc_driver_manager.AdbcStatement(conn) as first:
                    first.set_sql_query("SELECT count(*) FROM sqlite_schema")
                    pa.RecordBatchReader.from_stream(first.execute_query()[0]).read_all()
                begun[index].set()
                with adbc_driver_manager.AdbcStatement(conn) as query:
                    query.set_options(**{"adbc.sqlite.query.batch_rows": str(int(batch_rows))})
                    query.set_sql_query(sql)
                    if since:
                        query.bind_stream(pa.table({"since": [since]}))
                    reader = pa.RecordBatchReader.from_stream(query.execute_query()[0])
                    schema, part, pending, rows = reader.schema, 0, [], 0

                    def flush() -> None:
                        nonlocal part, pending, rows
                        target = str(Path(out) / f"{index}.{part}.arrow")
                        with pa.OSFile(target, "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
                            for batch in pending:
                                writer.write_batch(batch)
                        say(f"{index} {part}")
                        part, pending, rows = part + 1, [], 0

                    for batch in reader:  # a part at a time: the child never holds the whole result
                        pending.append(batch)
                        rows += batch.num_rows
                        if rows >= int(part_rows):
                            flush()
                    if pending or part == 0:  # an empty result is one part, for its schema
                        flush()
                conn.rollback()
            say(f"{index} end {part}")
        except BaseException:
            traceback.print_exc()
            failures.append(index)
            begun[index].set()  # the others need not wait for it

    threads = [threading.Thread(target=read, args=(i, sql, since)) for i, (sql, since) in enumerate(queries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if failures:
        sys.stderr.flush()
        os._exit(1)


if __name__ == "__main__":
    _child(*sys.argv[1:7])
