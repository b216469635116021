"""Jobs: the learning cycle, a rollback (deploy only), and ingestion with its reports."""

from dagster import AssetSelection, define_asset_job


CYCLE_ASSETS = ("curated_snapshot", "lora_adapter", "adapter_eval", "deployed_adapter")

cycle_job = define_asset_job(
    "cycle_job",
    selection=AssetSelection.assets(*CYCLE_ASSETS),
    description="Curate a snapshot, train an adapter on it, evaluate it and deploy it if the gates pass.",
)

rollback_job = define_asset_job(
    "rollback_job",
    selection=AssetSelection.assets("deployed_adapter"),
    description="Re-deploy an older adapter partition (never retrains or re-evaluates).",
)

ingest_job = define_asset_job(
    "ingest_job",
    selection=AssetSelection.assets("raw_interactions", "knowledge_facts", "quality_metrics"),
    description="Import landed files, refresh knowledge facts and quality metrics.",
)
