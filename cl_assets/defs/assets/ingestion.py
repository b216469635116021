"""Ingestion group: files dropped in data/landing/ enter through the ingestion API."""


from collections import Counter

from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cl_assets.core.ingest import import_landing
from cl_assets.defs.resources import StoreResource


@asset(
    group_name="ingestion",
    kinds={"python", "sql"},
    owners=["team:cl"],
    code_version="1",
    description="Sanitized interactions in the store, plus `data/ingestion/raw_interactions.jsonl`.",
)
def raw_interactions(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    ingestor = store.ingestor()
    reports = import_landing(ingestor)
    for report in reports:
        context.log.info(f"imported {report.file}: {report.as_dict()}")
    export, total = ingestor.export_sanitized()
    pii: Counter[str] = Counter()
    for report in reports:
        pii.update(report.pii_counts)
    return MaterializeResult(
        metadata={
            "files": len(reports),
            "new_rows": sum(r.accepted for r in reports),
            "duplicates": sum(r.duplicates for r in reports),
            "quarantined_lines": sum(r.quarantined for r in reports),
            "total_rows": total,
            "pii_hits": MetadataValue.json(dict(sorted(pii.items()))),
            "export": MetadataValue.path(str(export)),
        }
    )
