"""Training group: one LoRA adapter per snapshot partition."""


from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cl_assets.core.training import TrainConfig, TrainProgress
from cl_assets.defs.metadata import image
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import BaseModelResource, StoreResource


@asset(
    group_name="training",
    kinds={"pytorch", "python"},
    owners=["team:cl"],
    code_version="1",
    description="The base model's own greedy answers to general prompts it synthesized itself (Magpie-style), "
    "built once per base model and mixed into every training run so an update stays local "
    "(data/anchors/<key>/anchor.jsonl; lora_adapter builds it too when it is missing).",
)
def base_anchor(context: AssetExecutionContext, store: StoreResource, base_model: BaseModelResource):
    from cl_assets.core.anchor import read_anchor_rows
    from cl_assets.core.cycle import ensure_anchor

    settings = store.settings.get()

    def on_progress(stage: str, done: int, total: int) -> None:
        context.log.info(f"anchor set: {stage} {done}/{total}")

    path = ensure_anchor(settings, base_model.folder(), on_progress)
    if path is None:
        return MaterializeResult(metadata={"rows": 0, "note": "CL_ANCHOR_ROWS=0: training is not anchored"})
    rows = read_anchor_rows(path)
    return MaterializeResult(
        metadata={
            "rows": len(rows),
            "mean_answer_chars": round(sum(len(r["messages"][-1]["content"]) for r in rows) / len(rows), 1),
            "path": MetadataValue.path(str(path)),
        }
    )


@asset(
    partitions_def=snapshot_partitions,
    deps=["curated_snapshot", "base_anchor"],
    group_name="training",
    kinds={"pytorch", "python"},
    owners=["team:cl"],
    code_version="1",
    description="LoRA adapter (TRL + PEFT; QLoRA on CUDA) trained on the partition's snapshot, "
    "warm-started from the deployed adapter when CL_WARM_START is on.",
    check_specs=[AssetCheckSpec("adapter_files_load", asset="lora_adapter", blocking=True)],
)
def lora_adapter(context: AssetExecutionContext, store: StoreResource, base_model: BaseModelResource):
    from cl_assets.core.cycle import load_check, train_partition

    settings = store.settings.get()

    def on_step(p: TrainProgress) -> None:
        context.log.info(f"step {p.step}/{p.max_steps} loss {p.loss:.4f} epoch {p.epoch:.2f} {p.tokens_per_s:.0f} tok/s")

    trained = train_partition(
        settings, store.get(), context.partition_key, base_model.folder(), TrainConfig.from_settings(settings), on_step
    )
    yield MaterializeResult(
        metadata={
            "final_loss": trained.final_loss,
            "steps": trained.steps,
            "tokens": trained.tokens,
            "tokens_per_s": round(trained.tokens_per_s, 1),
            "duration_s": round(trained.duration_s, 1),
            "mode": trained.mode,
            "parent_adapter": trained.parent_id or "none",
            "path": MetadataValue.path(str(trained.output_dir)),
            "loss_curve": image(trained.loss_curve, "training loss"),
            # the scope router (core/scope.py): held-out recall and false-in rate of its 5-fold check
            **(trained.scope or {"scope": "none (routing off, no anchor prompts, or every layer adapted)"}),
        }
    )
    problem = load_check(settings, store.get(), context.partition_key, base_model.folder())
    yield AssetCheckResult(
        check_name="adapter_files_load",
        passed=problem is None,
        description=problem or "adapter loads onto the base model and its files match the registry",
    )
