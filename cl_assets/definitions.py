"""The one `Definitions` object of CL; `workspace.yaml` and `dg` load `defs` from here."""

from __future__ import annotations

from dagster import Definitions

from cl_assets.defs.assets.curation import curated_snapshot, knowledge_facts
from cl_assets.defs.assets.deployment import deployed_adapter
from cl_assets.defs.assets.evaluation import adapter_eval
from cl_assets.defs.assets.ingestion import raw_interactions
from cl_assets.defs.assets.monitoring import quality_metrics
from cl_assets.defs.assets.training import base_anchor, lora_adapter
from cl_assets.defs.jobs import cycle_job, ingest_job, rollback_job
from cl_assets.defs.resources import BaseModelResource, SettingsResource, StoreResource
from cl_assets.defs.sensors import build_sensors
from cl_assets.settings import Settings

ASSETS = [raw_interactions, knowledge_facts, curated_snapshot, base_anchor, lora_adapter, adapter_eval, deployed_adapter, quality_metrics]


def build_definitions(settings: Settings | None = None, settings_resource: SettingsResource | None = None) -> Definitions:
    """Definitions for `settings` (default: the environment). Tests pass their own."""
    settings = settings or Settings()
    config = settings_resource or SettingsResource()
    return Definitions(
        assets=ASSETS,
        jobs=[cycle_job, rollback_job, ingest_job],
        sensors=build_sensors(settings),
        resources={"store": StoreResource(settings=config), "base_model": BaseModelResource(settings=config)},
    )


defs = build_definitions()
