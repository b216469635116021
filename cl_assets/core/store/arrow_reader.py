"""Read a query's result from a SQLite file into Polars through ADBC, in a child process.

Why a child: ADBC's SQLite driver links its own copy of the SQLite library. Two copies of
SQLite in one process do not see each other's POSIX advisory locks, and closing a file in
one copy silently drops the locks the other holds on it (sqlite.org/howtocorrupt.html §2.2),
which lets another process write into a transaction this process believes it holds. The
store's own connections use Python's sqlite3, so ADBC must never open the file beside them.
The child reads (read-only, one statement: one consistent WAL snapshot) and writes Arrow IPC
to a private temporary file that the parent reads back and deletes. Starting it costs about
0.3 s; it saves seconds of Python objects per million rows (see docs/benchmarks.md).

The child runs this file as a script (`python -P arrow_reader.py DB SQL OUT SINCE TIMEOUT BATCH`),
so it imports Polars and ADBC only, not the `cl_assets` package.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import polars as pl


class ArrowReadError(RuntimeError):
    """The child process could not read the database."""


def read_query(database: Path, sql: str, since: str | None, *, busy_timeout_ms: int, batch_rows: int) -> pl.DataFrame:
    """Run `sql` (one optional `?` parameter, bound to `since`) on the SQLite file `database`.

    `batch_rows`: rows per Arrow batch; ADBC types each column by its first batch."""
    # mode 0700: only this user reads it; in memory (tmpfs) where the system has one, as the
    # result is read back at once: a disk would only add write-back of a file about to go.
    shm = Path("/dev/shm")
    where = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="cl-arrow-", dir=where) as tmp:
        out = Path(tmp) / "result.arrow"
        # The file as a script (-P: its folder not on sys.path): imports Polars and ADBC only, not the package.
        cmd = [sys.executable, "-P", __file__, str(database), sql, str(out), since or "", str(busy_timeout_ms),
               str(batch_rows)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        if proc.returncode != 0 or not out.is_file():
            why = " / ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"
            raise ArrowReadError(f"reading {database} failed (exit {proc.returncode}): {why[-2000:]}")
        return pl.read_ipc(out)


def _child(database: str, sql: str, out: str, since: str, busy_timeout_ms: str, batch_rows: str) -> None:
    import adbc_driver_manager
    import adbc_driver_sqlite

    uri = f"{Path(database).resolve().as_uri()}?mode=ro"
    with adbc_driver_sqlite.connect(uri) as db, adbc_driver_manager.AdbcConnection(db) as conn:
        with adbc_driver_manager.AdbcStatement(conn) as pragma:
            pragma.set_sql_query(f"PRAGMA busy_timeout={int(busy_timeout_ms):d}")
            pl.DataFrame(pragma.execute_query()[0])
        with adbc_driver_manager.AdbcStatement(conn) as query:
            query.set_options(**{"adbc.sqlite.query.batch_rows": str(int(batch_rows))})
            query.set_sql_query(sql)
            if since:
                query.bind_stream(pl.DataFrame({"since": [since]}))
            frame = pl.DataFrame(query.execute_query()[0])
    frame.write_ipc(out, compression="uncompressed")


if __name__ == "__main__":
    _child(*sys.argv[1:7])
