"""Monitoring group: helpful rate, latency and tokens/s per adapter version."""


from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cl_assets.core.monitoring import write_quality_metrics
from cl_assets.defs.metadata import image, table
from cl_assets.defs.resources import StoreResource


@asset(
    deps=["raw_interactions"],
    group_name="monitoring",
    kinds={"python", "polars"},
    owners=["team:cl"],
    code_version="1",
    description="Feedback and speed per adapter version over time; writes logs/feedback_metrics.json.",
)
def quality_metrics(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    settings = store.settings.get()
    summary, plots = write_quality_metrics(settings, store.get())
    context.log.info(f"{summary['total']} interactions summarized")
    return MaterializeResult(
        metadata={
            "interactions": summary["total"],
            "per_adapter": table(summary["per_adapter"]),
            "helpful_rate": image(plots["helpful_rate"], "helpful rate per adapter"),
            "latency_tokens": image(plots["latency"], "latency and tokens/s per day"),
            "file": MetadataValue.path(str(settings.feedback_metrics_path)),
        }
    )
