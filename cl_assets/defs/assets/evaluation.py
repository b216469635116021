"""Evaluation group: candidate vs deployed vs base, and the gates that guard a deploy."""


from dagster import AssetCheckResult, AssetCheckSpec, AssetExecutionContext, MaterializeResult, MetadataValue, asset

from cl_assets.core.cycle import evaluate_partition
from cl_assets.core.evaluation import DRIFT_PNG
from cl_assets.defs.metadata import image
from cl_assets.defs.partitions import snapshot_partitions
from cl_assets.defs.resources import BaseModelResource, StoreResource


@asset(
    partitions_def=snapshot_partitions,
    deps=["lora_adapter"],
    group_name="evaluation",
    kinds={"pytorch", "python"},
    owners=["team:cl"],
    code_version="1",
    description="Keyword QA accuracy (taught and general sets), latency and tokens/s of base, candidate "
    "and deployed adapter on the same prompts; report in data/eval/<snapshot id>/.",
    check_specs=[
        AssetCheckSpec("eval_not_worse_than_deployed", asset="adapter_eval", blocking=True,
                       description="Accuracy not below the deployed adapter's and few items lost, item by item."),
        AssetCheckSpec("forgetting_within_bound", asset="adapter_eval", blocking=True,
                       description="General set: net drop at most CL_GATE_MAX_FORGETTING, losses not beyond chance "
                       "(McNemar, CL_GATE_FORGETTING_ALPHA), drift at most CL_GATE_MAX_DRIFT nats/token."),
    ],
)
def adapter_eval(context: AssetExecutionContext, store: StoreResource, base_model: BaseModelResource):
    settings = store.settings.get()
    evaluated = evaluate_partition(settings, store.get(), context.partition_key, base_model.folder(),
                                   progress=context.log.info)
    report = evaluated.report
    summary = report.to_dict()["summary"]
    pair, drift = report.general_paired, report.drift
    context.log.info(f"taught accuracy {summary['taught_accuracy']}, general {summary['general_accuracy']}")
    cand = report.candidate_taught
    yield MaterializeResult(
        metadata={
            "accuracy": cand.accuracy,
            "partial_accuracy": cand.partial_accuracy,
            "base_accuracy": report.base_taught.accuracy,
            "deployed": report.deployed or "none",
            "precision": report.precision,  # the chat's serving precision, which every answer was given in
            "forgetting": summary["forgetting"] if summary["forgetting"] is not None else "n/a",
            "general_lost": len(pair.lost) if pair else 0,
            "general_gained": len(pair.gained) if pair else 0,
            "general_mcnemar_p": pair.p_worse if pair else 1.0,
            "drift_nll_per_token": drift.extra_nll_per_token if drift else "n/a",
            "drift_prefix_kept": drift.prefix_kept if drift else "n/a",
            # the adapter's scope router (core/scope.py): questions it sent to the base model
            "taught_routed_to_base": cand.routed_to_base,
            **({"general_routed_to_base": report.general[report.candidate].routed_to_base} if report.general else {}),
            "latency_p50_ms": cand.latency_p50_ms,
            "latency_p95_ms": cand.latency_p95_ms,
            "tokens_per_s": cand.tokens_per_s,
            "gate_passed": evaluated.passed,
            "taught_set": MetadataValue.path(str(settings.taught_qa_path)),
            # per group of the taught set (the demo's second cycle: kept / changed / new facts)
            **{f"accuracy_{group}": score.accuracy for group, score in cand.groups().items()},
            **({"old_answers_to_changed_facts": cand.stale.stale_rate} if cand.stale else {}),
            "report": MetadataValue.path(str(report.out_dir)),
            "chart": image(evaluated.chart, "accuracy per model"),
            **({"drift_chart": image(report.out_dir / DRIFT_PNG, "drift from the base")} if drift else {}),
        }
    )
    for gate in evaluated.gates:
        yield AssetCheckResult(check_name=gate.name, passed=gate.passed, description=gate.reason,
                               metadata={k: str(v) for k, v in gate.metadata.items()})
