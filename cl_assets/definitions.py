"""The one `Definitions` object of CL; `workspace.yaml` and `dg` load `defs` from here."""

from __future__ import annotations

from dagster import Definitions

from cl_assets.defs.assets import ASSETS
from cl_assets.defs.jobs import cycle_job, ingest_job, rollback_job
from cl_assets.defs.resources import BaseModelResource, SettingsResource, StoreResource
from cl_assets.defs.sensors import build_sensors

def build_definitions(settings_resource: SettingsResource | None = None) -> Definitions:
    """Definitions on one settings source (default: the environment); tests pass their own.

    The sensors' intervals, descriptions and thresholds and the resources' settings all come
    from `settings_resource`, so what the UI describes is what a tick applies."""
    config = settings_resource or SettingsResource()
    return Definitions(
        assets=ASSETS,
        jobs=[cycle_job, rollback_job, ingest_job],
        sensors=build_sensors(config.get()),
        resources={"store": StoreResource(settings=config), "base_model": BaseModelResource(settings=config)},
    )


defs = build_definitions()
