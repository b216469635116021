"""Deployment group: materializing partition P makes adapter P serve; older P = rollback."""


from dagster import AssetExecutionContext, Config, MaterializeResult, MetadataValue, asset
from pydantic import Field

from cl_assets.defs.metadata import table
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import StoreResource


class DeployConfig(Config):
    force: bool = Field(False, description="Deploy even though the evaluation gate failed.")
    actor: str = Field("dagster", description="Who deploys (kept in the deployment history).")
    reason: str = Field("", description="Why (kept in the deployment history).")


@asset(
    partitions_def=snapshot_partitions,
    deps=["adapter_eval"],
    group_name="deployment",
    kinds={"python", "sql"},
    owners=["team:cl"],
    code_version="1",
    description=(
        "The registry pointer: materializing a partition makes its adapter serve. Re-materialize an "
        "older partition to roll back; a failed gate is refused unless `force: true`."
    ),
)
def deployed_adapter(context: AssetExecutionContext, config: DeployConfig, store: StoreResource) -> MaterializeResult:
    registry = store.registry()
    adapter_id = context.partition_key
    reason = config.reason or f"run {context.run.run_id[:8]}"
    # The recorded gate verdict decides, so a deploy in a later run cannot skip a failed check.
    deployed = registry.deploy(adapter_id, actor=config.actor, reason=reason, force=config.force)
    context.log.info(f"adapter {adapter_id} now serves ({reason})")
    return MaterializeResult(
        metadata={
            "adapter": adapter_id,
            "forced": config.force,
            "actor": config.actor,
            "reason": reason,
            "path": MetadataValue.path(str(deployed.path)),
            "history": table(registry.history()[-10:]),
        }
    )
