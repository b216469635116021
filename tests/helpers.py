"""Test helpers shared across packages."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cl_assets.core.registry import adapter_dir, files_sha256
from cl_assets.core.store import Store
from cl_assets.settings import Settings


def register_adapter(settings: Settings, store: Store, sid: str, *, passed: bool | None = True, folder: Path | None = None) -> Path:
    """A registered snapshot + adapter with real files (copied from `folder`, or small stand-in files
    for registry logic that never loads weights)."""
    store.add_snapshot(id=sid, path=str(settings.curated_dir / f"curated_{sid}.jsonl"), sha256="0" * 64, n_rows=1)
    target = adapter_dir(settings, sid)
    if folder is not None:
        import shutil

        shutil.copytree(folder, target)
    else:
        target.mkdir(parents=True)
        (target / "adapter_config.json").write_text(json.dumps({"id": sid}))
        (target / "adapter_model.safetensors").write_bytes(sid.encode() * 10)
    store.upsert_adapter(
        sid,
        path=str(target),
        files_sha256=files_sha256(target),
        mode="lora-fp32-cpu",
        gate_passed=passed,
        gate_reason=None if passed else "accuracy 0.1 below deployed 0.5",
    )
    return target


def free_port() -> int:
    """A port nothing listens on now, on 127.0.0.1 (for servers a test starts)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], Any], timeout: float = 120, what: str = "condition") -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` s.
    A guard against hanging, not a timing assertion: pick it generously."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")

