"""Registry: deploy only passed gates, verify files, roll back along history, mirror to JSON."""

from __future__ import annotations

import json

import pytest

from cl_assets.core.registry import Registry, RegistryError, adapter_dir
from cl_assets.core.store import Store
from cl_assets.settings import Settings
from tests.helpers import register_adapter


@pytest.fixture
def registry(settings: Settings) -> Registry:
    return Registry(settings, Store.from_settings(settings))


def test_deploy_and_rollback_along_history(registry: Registry, settings: Settings) -> None:
    for sid in ("20261101_000000", "20261102_000000", "20261103_000000"):
        register_adapter(settings, registry.store, sid)
        registry.deploy(sid, actor="test", reason=f"cycle {sid}")
    assert registry.current().adapter_id == "20261103_000000"
    assert registry.rollback_target(steps=1) == "20261102_000000"
    assert registry.rollback_target(steps=2) == "20261101_000000"
    with pytest.raises(RegistryError, match="no adapter 3 step"):
        registry.rollback_target(steps=3)
    registry.deploy("20261101_000000", actor="alice", reason="bad answers")
    assert registry.current().adapter_id == "20261101_000000"
    history = registry.history()
    assert [h["adapter"] for h in history] == ["20261101_000000", "20261102_000000", "20261103_000000", "20261101_000000"]
    assert history[-1]["actor"] == "alice" and history[-1]["reason"] == "bad answers"
    mirror = json.loads(settings.registry_json_path.read_text())
    assert mirror["deployed"] == "20261101_000000" and len(mirror["deployments"]) == 4
    assert [row["deployed"] for row in mirror["snapshots"]] == [True, False, False]


def test_failed_gate_is_refused_unless_forced(registry: Registry, settings: Settings) -> None:
    register_adapter(settings, registry.store, "20261101_000000", passed=False)
    with pytest.raises(RegistryError, match="did not pass its evaluation gate"):
        registry.deploy("20261101_000000", actor="t", reason="try")
    assert registry.current().adapter_id is None
    registry.deploy("20261101_000000", actor="t", reason="I know", force=True)
    assert registry.history()[-1]["forced"] is True


def test_tampered_files_and_path_tricks_are_refused(registry: Registry, settings: Settings) -> None:
    folder = register_adapter(settings, registry.store, "20261101_000000")
    (folder / "adapter_model.safetensors").write_bytes(b"swapped")
    with pytest.raises(RegistryError, match="do not match"):
        registry.deploy("20261101_000000", actor="t", reason="x")
    for bad in ("../../etc", "20261101_000000/../x", "", "latest"):
        with pytest.raises(RegistryError, match="not a snapshot id"):
            adapter_dir(settings, bad)
    with pytest.raises(RegistryError, match="not registered"):
        registry.deploy("20991231_235959", actor="t", reason="x")


def test_rollback_from_base_has_nothing_to_go_back_to(registry: Registry) -> None:
    with pytest.raises(RegistryError, match="base model is serving"):
        registry.rollback_target(steps=1)
