"""Curation group: versioned ChatML snapshots (one partition each) and knowledge facts."""


from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetExecutionContext,
    Config,
    MaterializeResult,
    MetadataValue,
    asset,
)
from pydantic import Field

from cl_assets.core.cycle import curate_partition
from cl_assets.core.knowledge import top_facts, write_knowledge
from cl_assets.defs.metadata import table
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import StoreResource


class CurateConfig(Config):
    note: str = Field("", description="Why this snapshot was made (stored with it).")


@asset(
    partitions_def=snapshot_partitions,
    deps=["raw_interactions"],
    group_name="curation",
    kinds={"polars", "python"},
    owners=["team:cl"],
    code_version="1",
    description="Clean, helpful conversations as an immutable ChatML JSONL file, hashed in the registry.",
    check_specs=[
        AssetCheckSpec("snapshot_is_valid_chatml", asset="curated_snapshot", blocking=True,
                       description="Every line is ChatML (user then assistant) and there are enough rows."),
        AssetCheckSpec("snapshot_has_no_pii", asset="curated_snapshot", blocking=True,
                       description="The sanitizer finds no PII anywhere in the snapshot."),
    ],
)
def curated_snapshot(context: AssetExecutionContext, config: CurateConfig, store: StoreResource):
    settings = store.settings.get()
    curated = curate_partition(settings, store.get(), context.partition_key, config.note)
    snap = curated.snapshot
    context.log.info(f"snapshot {snap.id}: {snap.n_rows} rows {'(reused)' if curated.reused else ''}")
    yield MaterializeResult(
        metadata={
            "rows": snap.n_rows,
            "sha256": snap.sha256,
            "path": MetadataValue.path(str(snap.path)),
            "reused": curated.reused,
            # Counts, ids and the path only: Dagster's event log is out of `cl forget-user`'s reach.
            "filter_counts": table([{"step": k, "rows": v} for k, v in snap.counts.items()]),
        }
    )
    chatml_ok = not curated.chatml_problems and curated.enough_rows
    yield AssetCheckResult(
        check_name="snapshot_is_valid_chatml",
        passed=chatml_ok,
        description="valid ChatML" if chatml_ok else "; ".join(
            [str(p) for p in curated.chatml_problems[:5]]
            + ([] if curated.enough_rows else [f"{snap.n_rows} rows < {settings.min_snapshot_rows}"])
        ),
        metadata={"rows": snap.n_rows, "min_rows": settings.min_snapshot_rows},
    )
    yield AssetCheckResult(
        check_name="snapshot_has_no_pii",
        passed=not curated.pii_problems,
        description="no PII found" if not curated.pii_problems else "; ".join(str(p) for p in curated.pii_problems[:5]),
    )


@asset(
    deps=["raw_interactions"],
    group_name="curation",
    kinds={"polars", "python"},
    owners=["team:cl"],
    code_version="1",
    description="Entities (lots, orders, SKUs) mentioned in conversations, with the answers given about them.",
)
def knowledge_facts(context: AssetExecutionContext, store: StoreResource) -> MaterializeResult:
    settings = store.settings.get()
    facts = write_knowledge(settings, store.get())
    context.log.info(f"{len(facts)} entities aggregated")
    return MaterializeResult(
        metadata={
            "entities": len(facts),
            "path": MetadataValue.path(str(settings.knowledge_path)),
            "top_facts": MetadataValue.md(top_facts(facts, 15) or "(none yet)"),
        }
    )
