"""Path safety: neither registry entries nor CLI arguments can make CL load an adapter from
outside `data/adapters/`, and the chat refuses an adapter whose files differ from the registry."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cl_assets.core.model import AdapterSet
from cl_assets.core.registry import Registry, RegistryError, adapter_dir, files_sha256
from cl_assets.core.store import Store
from cl_assets.settings import Settings
from cl_chat.engine import ChatEngine
from tests.conftest import REPO, make_settings
from tests.helpers import register_adapter
from tests.reliability.support import SALT

A, B = "20261120_101500", "20261121_093000"


@pytest.fixture
def loads(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every folder handed to PEFT during the test."""
    seen: list[Path] = []
    original = AdapterSet.ensure_loaded

    def spy(self: AdapterSet, adapter_id: str, path: str | Path, **kwargs: object) -> None:
        seen.append(Path(path).resolve())
        original(self, adapter_id, path, **kwargs)

    monkeypatch.setattr(AdapterSet, "ensure_loaded", spy)
    return seen


@pytest.fixture
def home(tmp_path: Path, tiny_model_dir: Path) -> Settings:
    settings = make_settings(tmp_path / "home", base_model=str(tiny_model_dir), max_new_tokens=4, eval_max_new_tokens=4)
    settings.data_dir.mkdir(parents=True)
    shutil.copy(REPO / "data" / "qa_eval.jsonl", settings.qa_eval_path)  # so `cl eval` gets as far as the adapter
    return settings


def _raw_adapter_rows(store: Store, adapter_id: str, folder: Path) -> None:
    """Rows written straight into the tables, as a broken tool or a hand edit could."""
    store.add_snapshot(id=adapter_id, path="/nonexistent.jsonl", sha256="0" * 64, n_rows=1)
    store.upsert_adapter(adapter_id, path=str(folder), files_sha256=files_sha256(folder), mode="lora-fp32-cpu",
                         gate_passed=True)


def test_registry_entries_cannot_point_adapter_loading_outside(
    home: Settings, tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path, loads: list[Path]
) -> None:
    outside = shutil.copytree(tiny_adapter_dirs[A], tmp_path / "outside" / "evil")
    store = Store.from_settings(home)
    engine = ChatEngine(home, model=tiny_model_dir, store=store)
    registry = Registry(home, store)

    # 1. A well-formed id whose row names an outside folder (with that folder's hash): the row's
    #    path is never used; the adapter is looked for under data/adapters/<id> only.
    _raw_adapter_rows(store, A, outside)
    with pytest.raises(RegistryError, match=f"has no folder at {home.adapters_dir / A}"):
        registry.verified_path(A)
    store.add_deployment(A, actor="test", reason="row points outside")
    assert engine.refresh() is None and "has no folder" in (engine.swap_error or "")

    # 2. data/adapters/<id> is a symlink to the outside folder (whose hash the row holds).
    home.adapters_dir.mkdir(parents=True, exist_ok=True)
    (home.adapters_dir / A).symlink_to(outside, target_is_directory=True)
    with pytest.raises(RegistryError, match="resolves outside"):
        registry.verified_path(A)
    store.add_deployment(A, actor="test", reason="symlink outside")
    assert engine.refresh() is None and "resolves outside" in (engine.swap_error or "")

    # 3. Rows whose id itself is a path: refused before any path is built.
    for evil in ("../../outside/evil", "/tmp/evil", f"{B}/../../outside"):
        _raw_adapter_rows(store, evil, outside)
        with pytest.raises(RegistryError, match="is not a snapshot id"):
            registry.verified_path(evil)
        store.add_deployment(evil, actor="test", reason="id is a path")
        assert engine.refresh() is None and "is not a snapshot id" in (engine.swap_error or "")
        with pytest.raises(RegistryError, match="is not a snapshot id"):
            adapter_dir(home, evil)

    assert loads == [] and engine.adapters.loaded == {}
    turn = engine.ask(engine.new_session(), "hello")  # still answers, with the base model
    turn.consume()
    assert turn.adapter_version == "base"


@pytest.mark.parametrize(("command", "argument"), [("eval", "--adapter"), ("rollback", "--to")])
@pytest.mark.parametrize(
    "target", ["../../outside/evil", "../outside", "{tmp}/outside/evil", f"{A}/../../../outside/evil", f"{A}/.."]
)
def test_cli_arguments_cannot_point_adapter_loading_outside(
    home: Settings, tiny_adapter_dirs: dict[str, Path], tmp_path: Path, loads: list[Path],
    monkeypatch: pytest.MonkeyPatch, command: str, argument: str, target: str,
) -> None:
    """Even when the registry holds a row under that very id, with the hash of the folder the
    argument points at (so only the path checks stand between the argument and PEFT)."""
    target = target.format(tmp=tmp_path)
    store = Store.from_settings(home)
    register_adapter(home, store, B, folder=tiny_adapter_dirs[B])
    Registry(home, store).deploy(B, actor="test", reason="serving")
    where = Path(os.path.normpath(home.adapters_dir / target))
    if not where.exists():
        shutil.copytree(tiny_adapter_dirs[A], where)  # a loadable adapter where the argument points
    assert not where.is_relative_to(home.adapters_dir) or where == home.adapters_dir
    _raw_adapter_rows(store, target, where)
    monkeypatch.setenv("CL_HOME", str(home.home))
    monkeypatch.setenv("CL_USER_HASH_SALT", SALT)
    monkeypatch.setenv("CL_BASE_MODEL", home.base_model)
    monkeypatch.setenv("DAGSTER_HOME", str(home.home / ".dagster_home"))
    from cl_assets.cli import app

    result = CliRunner().invoke(app, [command, argument, target])
    assert result.exit_code == 1, result.output
    assert "is not a snapshot id" in " ".join(result.output.split())
    assert loads == []
    assert Registry(home, store).current().adapter_id == B and len(store.deployment_history()) == 1


def _tamper(folder: Path, how: str, tmp_path: Path) -> None:
    weights = folder / "adapter_model.safetensors"
    if how == "changed":
        data = bytearray(weights.read_bytes())
        data[-1] ^= 0xFF  # one bit pattern in the last byte
        weights.write_bytes(bytes(data))
    elif how == "added":
        (folder / "extra.py").write_text("print('surprise')\n")
    elif how == "removed":
        (folder / "adapter_config.json").unlink()
    elif how in ("symlinked", "symlinked-same-bytes"):
        # A link out of the adapters folder: even with today's bytes (the hash matches) the
        # file it names can change after the check, outside the folder CL guards.
        other = tmp_path / "other_weights.safetensors"
        shutil.copy(weights, other)
        if how == "symlinked":
            data = bytearray(other.read_bytes())
            data[-1] ^= 0xFF
            other.write_bytes(bytes(data))
        weights.unlink()
        weights.symlink_to(other)


REFUSED = "do not match the registry's hash|holds a symbolic link"


@pytest.mark.parametrize("how", ["changed", "added", "removed", "symlinked", "symlinked-same-bytes"])
def test_chat_and_cli_refuse_an_adapter_whose_files_do_not_match_the_registry(
    home: Settings, tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path,
    loads: list[Path], monkeypatch: pytest.MonkeyPatch, how: str,
) -> None:
    store = Store.from_settings(home)
    register_adapter(home, store, A, folder=tiny_adapter_dirs[A])
    folder = register_adapter(home, store, B, folder=tiny_adapter_dirs[B])
    registry = Registry(home, store)
    registry.deploy(A, actor="test", reason="good one")
    engine = ChatEngine(home, model=tiny_model_dir, store=store)
    assert engine.adapter_id == A

    _tamper(folder, how, tmp_path)
    with pytest.raises(RegistryError, match=REFUSED):
        registry.deploy(B, actor="test", reason="tampered")
    store.add_deployment(B, actor="test", reason="deployed behind the registry's back")
    turn = engine.ask(engine.new_session(), "hello")
    turn.consume()
    assert turn.adapter_version == A and engine.adapter_id == A  # the previous adapter keeps serving
    assert B not in engine.adapters.loaded and re.search(REFUSED, engine.swap_error or "")
    assert all(path != folder.resolve() for path in loads)

    monkeypatch.setenv("CL_HOME", str(home.home))
    monkeypatch.setenv("CL_USER_HASH_SALT", SALT)
    monkeypatch.setenv("CL_BASE_MODEL", home.base_model)
    from cl_assets.cli import app

    result = CliRunner().invoke(app, ["eval", "--adapter", B])
    assert result.exit_code == 1 and re.search(REFUSED, " ".join(result.output.split()))
