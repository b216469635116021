"""Scale-out: the whole loop with CL's tables on PostgreSQL (`CL_DATABASE_URL`) and Dagster's
own storage on PostgreSQL through `deploy/dagster.yaml` (dagster-postgres), driven by the `cl`
command as an operator would, then read back from a fresh instance (as the webserver would)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from cl_assets.core.registry import Registry
from cl_assets.core.store import Store
from tests.conftest import REPO, fresh_pg_database, make_settings
from tests.reliability.support import SALT


@pytest.fixture
def dagster_pg_url(pg_server: str) -> Iterator[str]:
    """A second fresh database on the real server, for Dagster's storage (CL's is `pg_url`)."""
    with fresh_pg_database(pg_server, "cl_dagster") as url:
        yield url


def _dagster_home(tmp_path: Path, url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DAGSTER_HOME holding the shipped deploy/dagster.yaml, its DAGSTER_PG_* pointing at `url`."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(REPO / "deploy" / "dagster.yaml", home / "dagster.yaml")
    parsed = make_url(url)
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setenv("DAGSTER_PG_HOST", parsed.host or "127.0.0.1")
    monkeypatch.setenv("DAGSTER_PG_PORT", str(parsed.port or 5432))
    monkeypatch.setenv("DAGSTER_PG_DB", parsed.database or "")
    monkeypatch.setenv("DAGSTER_PG_USER", parsed.username or "postgres")
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", parsed.password or "")
    return home


def test_the_whole_loop_runs_on_postgresql_for_cl_and_for_dagster(
    tmp_path: Path, pg_url: str, dagster_pg_url: str, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dagster_home = _dagster_home(tmp_path, dagster_pg_url, monkeypatch)
    instance = DagsterInstance.from_config(str(dagster_home))
    assert type(instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"

    home = tmp_path / "home"
    settings = make_settings(home, database_url=pg_url, base_model=str(tiny_model_dir))
    settings.data_dir.mkdir(parents=True)
    for name, n in (("qa_eval.jsonl", 4), ("qa_general.jsonl", 3)):  # a short evaluation
        lines = (REPO / "data" / name).read_text().splitlines()[:n]
        (settings.data_dir / name).write_text("\n".join(lines) + "\n")
    for key, value in {
        "CL_HOME": str(home), "CL_DATABASE_URL": pg_url, "CL_USER_HASH_SALT": SALT, "CL_BASE_MODEL": str(tiny_model_dir),
        "CL_TRAIN_MAX_STEPS": "2", "CL_TRAIN_MAX_LENGTH": "128", "CL_MIN_SNAPSHOT_ROWS": "5", "CL_EVAL_MAX_NEW_TOKENS": "8",
    }.items():
        monkeypatch.setenv(key, value)
    from cl_assets.cli import app

    runner = CliRunner()
    ingested = runner.invoke(app, ["ingest", str(REPO / "data" / "demo" / "interactions.jsonl")])
    assert ingested.exit_code == 0, ingested.output
    sid = "20261124_090000"
    cycle = runner.invoke(app, ["pipeline", "--curate", "--train", "--eval", "--deploy", "--snapshot", sid, "--note", "on pg"])
    assert cycle.exit_code == 0, cycle.output
    erased = runner.invoke(app, ["forget-user", "cust_003", "--json"])
    assert erased.exit_code == 0, erased.output

    # CL's record is in PostgreSQL, not in a SQLite file.
    store = Store.from_settings(settings)
    assert store.dialect == "postgresql" and not (settings.data_dir / "cl.db").exists()
    assert store.count_interactions() > 100
    assert store.get_snapshot(sid).note == "on pg" and store.get_adapter(sid).gate_passed is True
    assert Registry(settings, store).current().adapter_id == sid
    result = json.loads(erased.stdout)
    assert result["tainted_snapshots"] == [sid] and result["deployed_tainted"] == sid

    # Dagster's record is in the other PostgreSQL database: a fresh instance (another process,
    # e.g. the webserver) reads the run, its materializations, checks and the partition back.
    reader = DagsterInstance.from_config(str(dagster_home))
    runs = reader.get_runs()
    assert len(runs) == 1 and runs[0].status == DagsterRunStatus.SUCCESS and runs[0].tags.get("cl/trigger") == "cli"
    assert sid in reader.get_dynamic_partitions("snapshots")
    for asset in ("curated_snapshot", "lora_adapter", "adapter_eval", "deployed_adapter"):
        event = reader.get_latest_materialization_event(AssetKey(asset))
        assert event is not None and event.run_id == runs[0].run_id and event.dagster_event.partition == sid
    engine = create_engine(dagster_pg_url)
    with engine.connect() as conn:
        assert conn.execute(text("select count(*) from runs")).scalar() == 1
        assert conn.execute(text("select count(*) from event_logs")).scalar() > 10
    engine.dispose()
    assert not list(dagster_home.glob("**/*.db"))  # no SQLite storage beside the config
