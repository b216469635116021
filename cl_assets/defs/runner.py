"""Run the asset graph in process on the project's Dagster instance (what the CLI calls).

Runs started here are ordinary Dagster runs in `DAGSTER_HOME`, so the UI shows them too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from dagster import DagsterInstance, materialize

from cl_assets.defs.assets import ASSETS
from cl_assets.defs.home import prepare_dagster_home
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import BaseModelResource, SettingsResource, StoreResource
from cl_assets.settings import Settings

STEP_ASSETS = {"curate": "curated_snapshot", "train": "lora_adapter", "eval": "adapter_eval", "deploy": "deployed_adapter"}


def project_instance(settings: Settings) -> DagsterInstance:
    """The persistent instance under the project's DAGSTER_HOME (created on first use)."""
    os.environ["DAGSTER_HOME"] = str(prepare_dagster_home(settings))
    return DagsterInstance.get()


@dataclass(frozen=True)
class CycleRun:
    snapshot_id: str
    run_id: str
    success: bool
    failed_checks: list[str]
    error: str | None


def run_steps(
    settings: Settings,
    snapshot_id: str,
    steps: Sequence[str],
    *,
    instance: DagsterInstance | None = None,
    settings_resource: SettingsResource | None = None,
    note: str = "",
    deploy_config: dict[str, Any] | None = None,
) -> CycleRun:
    """Materialize the chosen cycle steps for one snapshot partition; never raises on a failed run."""
    unknown = set(steps) - set(STEP_ASSETS)
    if unknown:
        raise ValueError(f"unknown step(s) {sorted(unknown)}; choose from {list(STEP_ASSETS)}")
    instance = instance or project_instance(settings)
    instance.add_dynamic_partitions(snapshot_partitions.name, [snapshot_id])
    config = settings_resource or SettingsResource()
    ops: dict[str, Any] = {}
    if "curate" in steps:
        ops["curated_snapshot"] = {"config": {"note": note}}
    if "deploy" in steps:
        ops["deployed_adapter"] = {"config": deploy_config or {"actor": "cli", "reason": note or "cl pipeline"}}
    result = materialize(
        ASSETS,
        selection=[STEP_ASSETS[s] for s in STEP_ASSETS if s in steps],
        partition_key=snapshot_id,
        instance=instance,
        resources={"store": StoreResource(settings=config), "base_model": BaseModelResource(settings=config)},
        run_config={"ops": ops} if ops else None,
        raise_on_error=False,
        tags={"cl/trigger": "cli"},
    )
    failed = [e.check_name for e in result.get_asset_check_evaluations() if not e.passed]
    error = None if result.success else _root_cause(result)
    return CycleRun(snapshot_id, result.run_id, result.success, failed, error)


def _root_cause(result: Any) -> str:
    """The innermost error of the first failed step (the user's exception, not Dagster's wrapper)."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error is not None:
            error = event.step_failure_data.error
            while error.cause is not None:
                error = error.cause
            return f"{event.step_key}: {error.message.strip()}"
    return "run failed"
