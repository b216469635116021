"""Shared fixtures: isolated settings, the real PostgreSQL, and (via model_fixtures) models."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from cl_assets.settings import Settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["tests.model_fixtures"]

REPO = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = os.environ.get("CL_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fail_in_ci_else_skip(message: str) -> None:
    """A missing service or tool fails the run under CI (it must be there), and skips elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings rooted in `home`, ignoring any developer `.env` and `CL_*` variables."""
    values: dict[str, object] = {"home": home, "user_hash_salt": "test-salt-not-secret"}
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.fixture(autouse=True)
def _no_cl_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("CL_") and key not in {"CL_TEST_PG_URL", "CL_SHARED_DATA"}:
            monkeypatch.delenv(key)
    # Most tests train a tiny random model, which cannot synthesize the base-model anchor set
    # (it never samples an end of turn). Tests of anchoring ask for it explicitly.
    monkeypatch.setenv("CL_ANCHOR_ROWS", "0")
    # `auto` picks bf16 or fp32 by timing this CPU: answers in tests must not depend on the
    # machine. Tests of the serving precision ask for `auto` or bf16 explicitly.
    monkeypatch.setenv("CL_CHAT_DTYPE", "float32")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


def _pg_reachable() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        engine = create_engine(PG_ADMIN_URL)
        with engine.connect() as conn:
            conn.execute(text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="session")
def pg_server() -> str:
    """Admin URL of the real PostgreSQL; unreachable fails under CI, skips elsewhere."""
    problem = _pg_reachable()
    if problem:
        fail_in_ci_else_skip(f"PostgreSQL at {PG_ADMIN_URL} is unreachable: {problem}")
    return PG_ADMIN_URL


@contextmanager
def fresh_pg_database(server_url: str, prefix: str) -> Iterator[str]:
    """A new, empty database on the real server (its URL), dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty database on the real server for one test, dropped afterwards."""
    with fresh_pg_database(pg_server, "cl_test") as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def any_db_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """The same test on SQLite and on the real PostgreSQL."""
    if request.param == "sqlite":
        return make_settings(tmp_path)
    url = request.getfixturevalue("pg_url")
    return make_settings(tmp_path, database_url=url)
