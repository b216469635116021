"""The whole asset graph, materialized in process on a temp instance and data folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance, materialize
from typer.testing import CliRunner

from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry
from cl_assets.core.store import Store
from cl_assets.definitions import ASSETS
from cl_assets.defs.resources import BaseModelResource, SettingsResource, StoreResource
from cl_assets.defs.runner import run_steps
from cl_assets.settings import Settings
from tests.conftest import REPO, make_settings

SALT = "test-salt-not-secret"


def _resource(settings: Settings, **overrides: object) -> SettingsResource:
    values = {"user_hash_salt": SALT, **overrides}
    return SettingsResource(
        home=str(settings.home),
        database_url=settings.database_url,
        base_model=settings.base_model,
        overrides_json=json.dumps(values),
    )


def _small_qa(settings: Settings, taught: int, general: int) -> None:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for name, n in (("qa_eval.jsonl", taught), ("qa_general.jsonl", general)):
        lines = (REPO / "data" / name).read_text().splitlines()[:n]
        (settings.data_dir / name).write_text("\n".join(lines) + "\n")


@pytest.fixture
def tiny_home(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    """A project home with the demo data landed and the tiny model as the base."""
    settings = make_settings(tmp_path, base_model=str(tiny_model_dir), train_max_steps=2, min_snapshot_rows=5)
    _small_qa(settings, taught=4, general=3)
    settings.landing_dir.mkdir(parents=True)
    shutil.copy(REPO / "data" / "demo" / "interactions.jsonl", settings.landing_dir / "demo.jsonl")
    return settings


def _materialized(instance: DagsterInstance, run_id: str) -> set[str]:
    events = (entry.dagster_event for entry in instance.all_logs(run_id))
    return {e.asset_key.to_user_string() for e in events if e is not None and e.is_step_materialization}


def _materialize_ingestion(settings: Settings, resource: SettingsResource, instance: DagsterInstance) -> None:
    result = materialize(
        ASSETS,
        selection=["raw_interactions", "knowledge_facts", "quality_metrics"],
        instance=instance,
        resources={"store": StoreResource(settings=resource), "base_model": BaseModelResource(settings=resource)},
    )
    assert result.success


def test_whole_graph_then_rollback_by_partition_and_cli(tiny_home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = tiny_home
    resource = _resource(settings, train_max_steps=2, min_snapshot_rows=5)
    instance = DagsterInstance.ephemeral()
    _materialize_ingestion(settings, resource, instance)
    assert not list(settings.landing_dir.glob("*.jsonl")) and list((settings.landing_dir / "done").iterdir())
    assert settings.knowledge_path.exists() and settings.feedback_metrics_path.exists()

    steps = ["curate", "train", "eval", "deploy"]
    first = run_steps(settings, "20261120_100000", steps, instance=instance, settings_resource=resource, note="first")
    assert first.success, first.error
    assert first.failed_checks == []
    store = Store.from_settings(settings)
    registry = Registry(settings, store)
    assert store.get_snapshot("20261120_100000").note == "first"
    assert store.get_adapter("20261120_100000").gate_passed is True
    assert (settings.eval_dir / "20261120_100000" / "report.json").exists()
    assert registry.current().adapter_id == "20261120_100000"

    second = run_steps(settings, "20261120_110000", steps, instance=instance, settings_resource=resource)
    assert second.success, second.error
    assert registry.current().adapter_id == "20261120_110000"
    # Warm start: the second adapter was trained from the deployed first one.
    assert store.get_adapter("20261120_110000").parent_id == "20261120_100000"
    mirror = json.loads(settings.registry_json_path.read_text())
    assert mirror["deployed"] == "20261120_110000"

    # Rolling back = re-materializing the older deployed_adapter partition, and only that.
    back = run_steps(settings, "20261120_100000", ["deploy"], instance=instance, settings_resource=resource,
                     deploy_config={"actor": "test", "reason": "rollback by partition"})
    assert back.success, back.error
    assert registry.current().adapter_id == "20261120_100000"
    assert _materialized(instance, back.run_id) == {"deployed_adapter"}

    # `cl rollback --to` drives the same asset on the project's own instance (DAGSTER_HOME).
    monkeypatch.setenv("CL_HOME", str(settings.home))
    monkeypatch.setenv("CL_USER_HASH_SALT", SALT)
    monkeypatch.setenv("CL_BASE_MODEL", settings.base_model)
    from cl_assets.cli import app

    run_steps(settings, "20261120_110000", ["deploy"], settings_resource=resource)  # on the project instance
    assert registry.current().adapter_id == "20261120_110000"
    result = CliRunner().invoke(app, ["rollback", "--steps", "1", "--reason", "cli rollback"])
    assert result.exit_code == 0, result.output
    assert registry.current().adapter_id == "20261120_100000"
    assert registry.history()[-1]["reason"] == "cli rollback"
    history = CliRunner().invoke(app, ["registry", "history"])
    assert "cli rollback" in history.output


@pytest.mark.slow
def test_worse_adapter_is_stopped_by_the_blocking_gate_and_deploy_refuses_it_later(
    tmp_path: Path, smollm2_dir: Path
) -> None:
    """Real SmolLM2: a sane adapter deploys; one trained with a wrecking learning rate forgets the
    general set, its blocking check stops the deploy, and a later deploy-only run refuses it too."""
    settings = make_settings(tmp_path, base_model=str(smollm2_dir), min_snapshot_rows=5, eval_max_new_tokens=16)
    _small_qa(settings, taught=2, general=4)
    Ingestor(settings).import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")
    instance = DagsterInstance.ephemeral()
    steps = ["curate", "train", "eval", "deploy"]
    sane = _resource(settings, base_model=str(smollm2_dir), train_max_steps=1, learning_rate=1e-5,
                     min_snapshot_rows=5, eval_max_new_tokens=16)
    good = run_steps(settings, "20261120_100000", steps, instance=instance, settings_resource=sane)
    assert good.success, good.error

    wrecking = _resource(settings, base_model=str(smollm2_dir), train_max_steps=2, learning_rate=0.5,
                         min_snapshot_rows=5, eval_max_new_tokens=16, warm_start=False)
    bad = run_steps(settings, "20261120_110000", steps, instance=instance, settings_resource=wrecking)
    assert not bad.success
    assert "forgetting_within_bound" in bad.failed_checks
    assert _materialized(instance, bad.run_id) == {"curated_snapshot", "lora_adapter", "adapter_eval"}
    store = Store.from_settings(settings)
    registry = Registry(settings, store)
    assert registry.current().adapter_id == "20261120_100000"
    assert store.get_adapter("20261120_110000").gate_passed is False

    later = run_steps(settings, "20261120_110000", ["deploy"], instance=instance, settings_resource=sane)
    assert not later.success and "did not pass its evaluation gate" in (later.error or "")
    assert registry.current().adapter_id == "20261120_100000"

    forced = run_steps(settings, "20261120_110000", ["deploy"], instance=instance, settings_resource=sane,
                       deploy_config={"force": True, "actor": "alice", "reason": "testing a forced deploy"})
    assert forced.success
    assert registry.history()[-1] == registry.history()[-1] | {"adapter": "20261120_110000", "forced": True, "actor": "alice"}


def test_cl_demo_then_its_second_batch_warm_starts_and_asks_the_second_taught_set(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cl_assets.cli import app

    for key, value in {"CL_HOME": tmp_path, "CL_USER_HASH_SALT": SALT, "CL_BASE_MODEL": tiny_model_dir,
                       "CL_TRAIN_MAX_STEPS": 2, "CL_MIN_SNAPSHOT_ROWS": 5, "CL_EVAL_MAX_NEW_TOKENS": 4}.items():
        monkeypatch.setenv(key, str(value))
    settings = make_settings(tmp_path)
    _small_qa(settings, taught=24, general=3)
    (settings.data_dir / "qa_eval.jsonl").unlink()  # the shipped taught set, as on a fresh home

    first = CliRunner().invoke(app, ["demo"])
    assert first.exit_code == 0, first.output
    store = Store.from_settings(settings)
    (cycle1,) = [a.id for a in store.list_adapters()]
    report1 = json.loads((settings.eval_dir / cycle1 / "report.json").read_text())
    assert report1["taught"][cycle1]["n"] == 24 and report1["taught"][cycle1]["groups"] == {}

    second = CliRunner().invoke(app, ["demo", "--second-batch"])
    assert second.exit_code == 0, second.output
    (cycle2,) = [a.id for a in store.list_adapters() if a.id != cycle1]
    assert store.get_adapter(cycle2).parent_id == cycle1  # warm start from the deployed first adapter
    # The second month's 👍 answers superseded the first month's to the same questions.
    snapshot2 = [json.loads(line) for line in Path(store.get_snapshot(cycle2).path).read_text().splitlines()]
    taught = [m["content"] for line in snapshot2 for m in line["messages"] if m["role"] == "assistant" and m.get("weight", 1)]
    assert any("Reno" in t for t in taught) and any("$225" in t for t in taught) and any("Net 30" in t for t in taught)
    assert not [t for t in taught if "Dayton" in t or "$175" in t or "Net 45" in t]
    assert Registry(settings, store).current().adapter_id == cycle2
    report2 = json.loads((settings.eval_dir / cycle2 / "report.json").read_text())
    taught = report2["taught"][cycle2]
    assert taught["n"] == 30 and set(taught["groups"]) == {"kept", "changed", "new"}
    assert taught["stale"]["with_stale"] == 3
    assert set(report2["summary"]["taught_groups"][cycle2]) == {"kept", "changed", "new"}
    from dagster import AssetKey

    from cl_assets.defs.runner import project_instance

    event = project_instance(settings).get_latest_materialization_event(AssetKey("adapter_eval"))
    assert event is not None and event.asset_materialization.partition == cycle2
    metadata = event.asset_materialization.metadata
    assert {"accuracy_kept", "accuracy_changed", "accuracy_new", "old_answers_to_changed_facts"} <= set(metadata)
    assert metadata["taught_set"].value.endswith("qa_eval_2.jsonl")
    assert metadata["precision"].value == "float32"  # conftest pins the serving precision
    # Without --second-batch the shipped taught set is asked again.
    assert json.loads((settings.eval_dir / cycle1 / "report.json").read_text())["taught"][cycle1]["n"] == 24
