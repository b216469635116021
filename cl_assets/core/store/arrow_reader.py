"""Read queries' results from a SQLite file into Polars through ADBC, in a child process.

Why a child: ADBC's SQLite driver links its own copy of the SQLite library. Two copies of
SQLite in one process do not see each other's POSIX advisory locks, and closing a file in
one copy silently drops the locks the other holds on it (sqlite.org/howtocorrupt.html §2.2),
which lets another process write into a transaction this process believes it holds. The
store's own connections use Python's sqlite3, so ADBC must never open the file beside them.
The child reads (read-only, all queries in one read transaction: one consistent WAL
snapshot) and streams each result, batch by batch, into an Arrow IPC file in a private
temporary folder; it names each file on its stdout when it is complete, so the parent maps
and converts one result while the child reads the next. Starting it costs about 0.3 s; it
saves seconds of Python objects per million rows (see docs/benchmarks.md).

The child runs this file as a script (`python -P arrow_reader.py DB QUERIES OUT TIMEOUT BATCH`),
so it imports pyarrow and ADBC only, not the `cl_assets` package.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import polars as pl


class ArrowReadError(RuntimeError):
    """The child process could not read the database."""


def read_queries(
    database: Path, queries: Sequence[tuple[str, str | None]], *, busy_timeout_ms: int, batch_rows: int
) -> Iterator[pl.DataFrame]:
    """Run each `(sql, since)` (one optional `?` parameter, bound to `since`) on the SQLite file
    `database`, in one read transaction; yields each result as soon as the child has it.

    `batch_rows`: rows per Arrow batch; ADBC types each column by its first batch."""
    # mode 0700: only this user reads it; in memory (tmpfs) where the system has one, as each
    # result is mapped at once: a disk would only add write-back of a file about to go.
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="cl-arrow-", dir=where) as tmp:
        errors = Path(tmp) / "stderr.txt"
        spec = json.dumps([[sql, since or None] for sql, since in queries])
        # The file as a script (-P: its folder not on sys.path): imports pyarrow and ADBC only.
        cmd = [sys.executable, "-P", __file__, str(database), spec, tmp, str(busy_timeout_ms), str(batch_rows)]
        with errors.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                    env={**os.environ, "PYTHONWARNINGS": "ignore"})  # fmt: skip
        try:
            assert proc.stdout is not None
            for index in range(len(queries)):
                if proc.stdout.readline().strip() != str(index):
                    proc.wait()
                    why = " / ".join(errors.read_text().strip().splitlines()[-3:]) or "no output"
                    raise ArrowReadError(f"reading {database} failed (exit {proc.returncode}): {why[-2000:]}")
                path = Path(tmp) / f"{index}.arrow"
                frame = pl.read_ipc(path)  # copied out, compact: the file's pages go with it
                path.unlink()
                assert isinstance(frame, pl.DataFrame)
                yield frame
            if proc.wait() != 0:
                raise ArrowReadError(f"reading {database} failed (exit {proc.returncode}): {errors.read_text()[-2000:]}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()  # type: ignore[union-attr]


def read_query(database: Path, sql: str, since: str | None, *, busy_timeout_ms: int, batch_rows: int) -> pl.DataFrame:
    """One query's result (see `read_queries`)."""
    [frame] = read_queries(database, [(sql, since)], busy_timeout_ms=busy_timeout_ms, batch_rows=batch_rows)
    return frame


def _child(database: str, spec: str, out: str, busy_timeout_ms: str, batch_rows: str) -> None:
    import adbc_driver_manager
    import adbc_driver_sqlite
    import pyarrow as pa
    import pyarrow.ipc

    uri = f"{Path(database).resolve().as_uri()}?mode=ro"
    with adbc_driver_sqlite.connect(uri) as db, adbc_driver_manager.AdbcConnection(db) as conn:
        with adbc_driver_manager.AdbcStatement(conn) as pragma:
            pragma.set_sql_query(f"PRAGMA busy_timeout={int(busy_timeout_ms):d}")
            pa.RecordBatchReader.from_stream(pragma.execute_query()[0]).read_all()
        # Off autocommit, the driver opens a transaction: every query reads the same snapshot.
        conn.set_options(**{"adbc.connection.autocommit": "false"})
        for index, (sql, since) in enumerate(json.loads(spec)):
            with adbc_driver_manager.AdbcStatement(conn) as query:
                query.set_options(**{"adbc.sqlite.query.batch_rows": str(int(batch_rows))})
                query.set_sql_query(sql)
                if since:
                    query.bind_stream(pa.table({"since": [since]}))
                reader = pa.RecordBatchReader.from_stream(query.execute_query()[0])
                target = str(Path(out) / f"{index}.arrow")
                with pa.OSFile(target, "wb") as sink, pa.ipc.new_file(sink, reader.schema) as writer:
                    for batch in reader:  # batch by batch: the child never holds the whole result
                        writer.write_batch(batch)
                del reader
            print(index, flush=True)
        conn.rollback()


if __name__ == "__main__":
    _child(*sys.argv[1:6])
