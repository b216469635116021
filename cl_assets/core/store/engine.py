"""Engines that behave the same on SQLite and PostgreSQL, and schema upgrades through Alembic.

SQLite: WAL so readers never block the writer, a busy timeout, and `BEGIN IMMEDIATE` for
write transactions, so two writers queue on the lock instead of one failing with
"database is locked" when both try to upgrade a read lock at once.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / "migrations"
SQLITE_BUSY_TIMEOUT_MS = 60_000
WRITE_OPTION = "cl_write"


def make_engine(url: str) -> Engine:
    """An engine for `url`; SQLite files get their folder created and the pragmas above."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)

    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (below)
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:  # type: ignore[no-untyped-def]
        immediate = conn.get_execution_options().get(WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _alembic_config(engine: Engine):  # type: ignore[no-untyped-def]
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


@functools.cache
def head_revision() -> str:
    """The newest migration shipped with this code (read once per process)."""
    from alembic.script import ScriptDirectory

    cfg = _alembic_config(create_engine("sqlite://"))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None, "no Alembic migrations found"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        return conn.execute(text("select version_num from alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    """Bring the schema to the newest migration; safe when several processes start at once."""
    if current_revision(engine) == head_revision():
        return
    from alembic import command

    cfg = _alembic_config(engine)
    with engine.execution_options(**{WRITE_OPTION: True}).begin() as conn:
        if engine.dialect.name == "postgresql":
            # One migrator at a time across processes; released at commit.
            conn.execute(text("select pg_advisory_xact_lock(7316001)"))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    log.info("database schema at %s", head_revision())
