"""Registry of snapshots, adapters and deployments: which adapter serves, and how to go back.

The SQL tables are the record; `registry.json` is a mirror for people. A deployment is an
appended row, so rollback is just another deployment of an older adapter, and the history
says who did what and why.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_assets.core.events import record_event
from cl_assets.core.files import atomic_write_text
from cl_assets.core.snapshot import is_snapshot_id
from cl_assets.core.store import Adapter, Store
from cl_assets.settings import Settings

log = logging.getLogger(__name__)

#: What stands for an adapter id where the base model answers alone (chat badge, monitoring, reports).
BASE_LABEL = "base"


class RegistryError(RuntimeError):
    """A registry operation was refused; the message says why and what to do."""


def check_snapshot_id(snapshot_id: str) -> str:
    if not is_snapshot_id(snapshot_id):
        raise RegistryError(f"{snapshot_id!r} is not a snapshot id (expected YYYYMMDD_HHMMSS)")
    return snapshot_id


def adapter_dir(settings: Settings, adapter_id: str) -> Path:
    """The adapter's folder, guaranteed to be inside the adapters folder (no path tricks)."""
    check_snapshot_id(adapter_id)
    root = settings.adapters_dir.resolve()
    path = (root / adapter_id).resolve()
    if path.parent != root:
        raise RegistryError(f"adapter {adapter_id!r} resolves outside {root}")
    return path


def files_sha256(folder: Path) -> str:
    """One hash over every file's relative path and bytes, so any change to an adapter shows."""
    return _digest(_read_files(folder))


def _read_files(folder: Path) -> dict[str, bytes]:
    """Every file under `folder`, by relative POSIX path."""
    return {file.relative_to(folder).as_posix(): file.read_bytes() for file in folder.rglob("*") if file.is_file()}


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode())
        digest.update(hashlib.sha256(files[name]).digest())
    return digest.hexdigest()


@dataclass(frozen=True)
class Deployed:
    adapter_id: str | None
    path: Path | None
    files_sha256: str | None
    deployment_id: int | None


class Registry:
    """Deploy, roll back and describe adapters on top of the store."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store

    def current(self) -> Deployed:
        """The serving adapter (cheap: one indexed row), or the base model when none."""
        row = self.store.current_deployment()
        if row is None or row.adapter_id is None:
            return Deployed(None, None, None, row.id if row else None)
        adapter = self.store.get_adapter(row.adapter_id)
        sha = adapter.files_sha256 if adapter else None
        return Deployed(row.adapter_id, adapter_dir(self.settings, row.adapter_id), sha, row.id)

    def verified_path(self, adapter_id: str) -> Path:
        """The adapter's folder after checking its files still match the registered hash."""
        return self.read_verified(adapter_id)[0]

    def read_verified(self, adapter_id: str) -> tuple[Path, dict[str, bytes]]:
        """The adapter's folder and its files' bytes, checked against the registered hash.

        Load from these bytes, not from the folder: what was checked is then what is loaded,
        whatever happens on disk afterwards, and each file is read once."""
        adapter = self.store.get_adapter(adapter_id)
        if adapter is None:
            raise RegistryError(f"adapter {adapter_id} is not registered")
        path = adapter_dir(self.settings, adapter_id)
        if not path.is_dir():
            raise RegistryError(f"adapter {adapter_id} has no folder at {path}")
        # CL writes plain files only. A link would make PEFT read a file outside the adapters
        # folder, which can change after this check even when its bytes match the hash now.
        link = next((p for p in path.rglob("*") if p.is_symlink()), None)
        if link is not None:
            raise RegistryError(
                f"adapter {adapter_id} holds a symbolic link ({link.relative_to(path).as_posix()}); "
                "adapter folders must hold plain files only"
            )
        files = _read_files(path)
        if _digest(files) != adapter.files_sha256:
            raise RegistryError(f"adapter {adapter_id}'s files do not match the registry's hash (changed on disk?)")
        return path, files

    def deploy(self, adapter_id: str | None, *, actor: str, reason: str, force: bool = False) -> Deployed:
        """Make `adapter_id` (None: the base model) serve; refuses a failed or missing gate unless forced."""
        if adapter_id is not None:
            adapter = self.store.get_adapter(check_snapshot_id(adapter_id))
            if adapter is None:
                raise RegistryError(f"adapter {adapter_id} is not registered; train it first")
            if adapter.tainted and not force:
                raise RegistryError(f"adapter {adapter_id} is tainted (trained on erased data); retrain instead")
            if adapter.gate_passed is not True and not force:
                why = adapter.gate_reason or "it has not been evaluated"
                raise RegistryError(f"adapter {adapter_id} did not pass its evaluation gate ({why}); use force to override")
            self.verified_path(adapter_id)
        self.store.add_deployment(adapter_id, actor=actor, reason=reason, forced=force)
        record_event(self.settings, self.store, "deploy", adapter=adapter_id, actor=actor, reason=reason, forced=force)
        self.write_mirror()
        log.info("deployed %s (%s)", adapter_id or "base model", reason)
        return self.current()

    def rollback_target(self, *, steps: int = 1, to: str | None = None) -> str:
        """The adapter a rollback should deploy: `to`, or `steps` older than the current one."""
        if to is not None:
            return check_snapshot_id(to)
        if steps < 1:
            raise RegistryError("steps must be at least 1")
        ever_deployed = sorted({d.adapter_id for d in self.store.deployment_history() if d.adapter_id})
        current = self.current().adapter_id
        if current is None or current not in ever_deployed:
            raise RegistryError("nothing to roll back from: the base model is serving")
        index = ever_deployed.index(current) - steps
        if index < 0:
            raise RegistryError(f"there is no adapter {steps} step(s) older than {current}")
        return ever_deployed[index]

    def describe(self) -> list[dict[str, Any]]:
        """One row per snapshot: its adapter, eval figures, gate and whether it serves."""
        current = self.current().adapter_id
        adapters: dict[str, Adapter] = {a.id: a for a in self.store.list_adapters()}
        rows = []
        for snap in self.store.list_snapshots():
            adapter = adapters.get(snap.id)
            rows.append(
                {
                    "snapshot": snap.id,
                    "rows": snap.n_rows,
                    "sha256": snap.sha256,
                    "note": snap.note,
                    "adapter": bool(adapter),
                    "parent": adapter.parent_id if adapter else None,
                    "mode": adapter.mode if adapter else None,
                    "accuracy": adapter.accuracy if adapter else None,
                    "general_accuracy": adapter.general_accuracy if adapter else None,
                    "gate_passed": adapter.gate_passed if adapter else None,
                    "gate_reason": adapter.gate_reason if adapter else None,
                    "tainted": snap.tainted or bool(adapter and adapter.tainted),
                    "deployed": snap.id == current,
                }
            )
        return rows

    def history(self) -> list[dict[str, Any]]:
        return [
            {
                "id": d.id,
                "time": d.created_at.isoformat(),
                "adapter": d.adapter_id,
                "actor": d.actor,
                "reason": d.reason,
                "forced": d.forced,
            }
            for d in self.store.deployment_history()
        ]

    def write_mirror(self) -> Path:
        """Rewrite `registry.json` (atomically) from the tables."""
        payload = {"deployed": self.current().adapter_id, "snapshots": self.describe(), "deployments": self.history()}
        path = self.settings.registry_json_path
        atomic_write_text(path, json.dumps(payload, indent=2, default=str))
        return path
