"""One learning cycle on the demo data with a recipe variation, real SmolLM2: the rows of docs/learning.md.

The pipeline's own functions, as `tests/core/test_learning_e2e.py` runs them (ingest the demo,
curate, train, evaluate with the gates), with one thing changed per run:

    python bench/learning_recipes.py NAME                       # the default recipe
    python bench/learning_recipes.py NAME --no-anchor           # no replay at all
    python bench/learning_recipes.py NAME --factual 0           # the Magpie anchor rows only
    python bench/learning_recipes.py NAME --anchor-loss sft     # anchor rows as ordinary targets
    python bench/learning_recipes.py NAME --lr 5e-4 --targets q_proj,k_proj,v_proj,o_proj
    python bench/learning_recipes.py NAME --replay-only         # control: the anchor rows alone
    python bench/learning_recipes.py NAME --second-cycle        # then the demo's second month, warm-started

The anchor set is the pipeline's own (`cycle.ensure_anchor`: Magpie prompts plus factual ones of
six kinds from package data, answered by the base; `core/anchor.py`), the shipped one when its
spec matches, else built once into the run's home. Prints one
`FIGURES {...}` JSON line and writes it to `<out>/<NAME>.json`; the run's home (store, adapter,
eval report) stays in `<out>/<NAME>/` for inspection.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SNAPSHOT_ID = "20261120_120000"
SECOND_ID = "20261220_120000"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name")
    parser.add_argument("--out", type=Path, default=Path("/tmp/cl-learning-recipes"))
    parser.add_argument("--no-anchor", action="store_true", help="no replay rows at all")
    parser.add_argument("--factual", type=int, help="factual anchor prompts per kind (6 kinds; default: the setting's 50)")
    parser.add_argument("--replay-only", action="store_true",
                        help="a control: train on the replay rows alone (they replace the snapshot), to see how many "
                             "general answers flip when the adapter is taught nothing but the base's own answers")
    parser.add_argument("--lr", type=float)
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--rank", type=int, help="LoRA rank (alpha = 2 x rank)")
    parser.add_argument("--targets", help="comma-separated module names (default: all-linear)")
    parser.add_argument("--target-regex", help="one regex over full module names (PEFT's str form), e.g. upper layers only: "
                                               r"'.*\.layers\.(1[5-9]|2\d)\..*_proj'")
    parser.add_argument("--anchor-loss", choices=("kl", "sft"), help="how replay rows anchor (default: TrainConfig's)")
    parser.add_argument("--anchor-weight", type=float, help="weight of the KL anchor term")
    parser.add_argument("--anchor-batch", type=int, help="anchor rows per step (KL anchor)")
    parser.add_argument("--layers-from", type=float, help="LoRA on layers from this share of the depth up (default: the setting's)")
    parser.add_argument("--no-routing", action="store_true", help="no scope router: the adapter answers everything")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--second-cycle", action="store_true",
                        help="then the demo's second month warm-started from the first adapter (deployed, forced if "
                             "its gate refused it), asked data/demo/qa_eval_2.jsonl, as tests/core/test_learning_e2e.py")
    parser.add_argument("--skip-unrouted", action="store_true", help="leave out the adapter-alone evaluation (~4.5 min)")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from cl_assets.core.cycle import curate_partition, ensure_anchor, evaluate_partition, train_partition
    from cl_assets.core.ingest import Ingestor
    from cl_assets.core.model import ensure_base_model
    from cl_assets.core.training import TrainConfig
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

    base_model = Path(ensure_base_model(Settings(  # type: ignore[call-arg]
        _env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL)))
    home = args.out / args.name
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    overrides: dict[str, Any] = {}
    if args.lr:
        overrides["learning_rate"] = args.lr
    if args.epochs:
        overrides["train_epochs"] = args.epochs
    if args.rank:
        overrides.update(lora_r=args.rank, lora_alpha=2 * args.rank)
    if args.no_anchor:
        overrides["anchor_rows"] = 0
    if args.layers_from is not None:
        overrides["lora_layers_from"] = args.layers_from
    if args.no_routing:
        overrides["scope_routing"] = False
    if args.factual is not None:
        overrides["anchor_factual_per_kind"] = args.factual
    settings = Settings(_env_file=None, home=home, user_hash_salt="recipe-salt", base_model=str(base_model),  # type: ignore[call-arg]
                        **overrides)
    settings.data_dir.mkdir(parents=True)
    for name in ("qa_eval.jsonl", "qa_general.jsonl"):
        shutil.copy(REPO / "data" / name, settings.data_dir / name)
    # The base model's evaluation results depend only on the base and the items: shared across runs.
    shared_cache = args.out / ".base_cache"
    shared_cache.mkdir(parents=True, exist_ok=True)
    settings.eval_dir.mkdir(parents=True, exist_ok=True)
    (settings.eval_dir / ".base_cache").symlink_to(shared_cache.resolve())

    started = time.perf_counter()
    figures: dict[str, Any] = {"name": args.name, "args": {k: v for k, v in vars(args).items() if k != "out"}}
    ingestor = Ingestor(settings)
    ingestor.import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")
    curated = curate_partition(settings, ingestor.store, SNAPSHOT_ID)

    t0 = time.perf_counter()
    anchor_path = ensure_anchor(settings, base_model)  # the anchor set the pipeline trains with (cached per spec)
    figures["anchor_build_s"] = time.perf_counter() - t0
    figures["anchor_rows"] = len(anchor_path.read_text(encoding="utf-8").splitlines()) if anchor_path else 0

    train_settings = settings
    if args.replay_only:
        if anchor_path is None:
            parser.error("--replay-only needs replay rows (leave out --no-anchor)")
        from cl_assets.core.snapshot import file_sha256

        rows = len(anchor_path.read_text(encoding="utf-8").splitlines())
        ingestor.store.update_snapshot(SNAPSHOT_ID, path=str(anchor_path), sha256=file_sha256(anchor_path), n_rows=rows)
        train_settings = settings.model_copy(update={"anchor_rows": 0})  # nothing mixed in on top
        anchor_path = None
    recipe: dict[str, Any] = {}
    if args.targets:
        recipe["target_modules"] = tuple(args.targets.split(","))
    if args.target_regex:
        recipe["target_modules"] = args.target_regex
    if args.anchor_loss:
        recipe["anchor_loss"] = args.anchor_loss
    if args.anchor_weight is not None:
        recipe["anchor_weight"] = args.anchor_weight
    if args.anchor_batch:
        recipe["anchor_batch_size"] = args.anchor_batch
    config = TrainConfig.from_settings(settings, **recipe)
    t0 = time.perf_counter()
    trained = train_partition(train_settings, ingestor.store, SNAPSHOT_ID, base_model, config,
                              anchor_path=anchor_path)
    figures["train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluated = evaluate_partition(settings, ingestor.store, SNAPSHOT_ID, base_model)
    figures["eval_s"] = time.perf_counter() - t0
    report = evaluated.report
    pair, drift = report.general_paired, report.drift
    assert pair is not None and drift is not None
    figures["scope"] = trained.scope
    if trained.scope and not args.skip_unrouted:  # the adapter alone, routing off, on the same prompts: what the router changes
        from cl_assets.core.evaluation import compare_adapters, load_qa
        from cl_assets.core.model import AdapterSet, load_base_model

        t0 = time.perf_counter()
        alone = AdapterSet(load_base_model(base_model), routing=False)
        alone.ensure_loaded(SNAPSHOT_ID, trained.output_dir)
        unrouted = compare_adapters(alone, SNAPSHOT_ID, taught=load_qa(settings.taught_qa_path),
                                    general=load_qa(settings.data_dir / "qa_general.jsonl"),
                                    max_new_tokens=settings.eval_max_new_tokens, system_prompt=settings.system_prompt,
                                    batch_size=settings.eval_batch_size, base_cache_dir=settings.eval_dir / ".base_cache")
        u_pair, u_drift = unrouted.general_paired, unrouted.drift
        assert u_pair is not None and u_drift is not None
        figures["unrouted"] = {"taught": unrouted.candidate_taught.accuracy,
                               "general": unrouted.general[SNAPSHOT_ID].accuracy, "lost": len(u_pair.lost),
                               "gained": len(u_pair.gained), "p_worse": u_pair.p_worse, "drift": u_drift.summary(),
                               "eval_s": time.perf_counter() - t0}
    figures.update({
        "routed_to_base": {"taught": evaluated.report.candidate_taught.routed_to_base,
                           "general": evaluated.report.general[SNAPSHOT_ID].routed_to_base},
        "taught_misses": {i.id: i.answer[:100] for i in evaluated.report.candidate_taught.items if not i.correct},
        "snapshot_rows": curated.snapshot.n_rows, "steps": trained.steps,
        "taught": {k: v.accuracy for k, v in report.taught.items()},
        "general": {k: v.accuracy for k, v in report.general.items()},
        "lost": len(pair.lost), "gained": len(pair.gained), "p_worse": pair.p_worse, "n": pair.n,
        "drift": drift.summary(), "gates": {g.name: [g.passed, g.reason] for g in evaluated.gates},
        "total_s": time.perf_counter() - started,
    })
    if args.second_cycle:
        figures["second"] = _second_cycle(settings, ingestor, base_model, recipe, passed=evaluated.passed)
        figures["total_s"] = time.perf_counter() - started
    print("FIGURES " + json.dumps(figures), flush=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return 0


def _second_cycle(settings: Any, ingestor: Any, base_model: Path, recipe: dict[str, Any], *, passed: bool) -> dict[str, Any]:
    """The demo's second month on top of the first adapter, with the same recipe."""
    from cl_assets.core.cycle import curate_partition, evaluate_partition, train_partition
    from cl_assets.core.registry import Registry
    from cl_assets.core.training import TrainConfig

    Registry(settings, ingestor.store).deploy(SNAPSHOT_ID, actor="bench", reason="learning recipe", force=not passed)
    second = settings.model_copy(update={"qa_taught_file": REPO / "data" / "demo" / "qa_eval_2.jsonl"})
    ingestor.import_jsonl(REPO / "data" / "demo" / "interactions_2.jsonl")
    t0 = time.perf_counter()
    curated = curate_partition(second, ingestor.store, SECOND_ID)
    trained = train_partition(second, ingestor.store, SECOND_ID, base_model, TrainConfig.from_settings(second, **recipe))
    train_s = time.perf_counter() - t0
    evaluated = evaluate_partition(second, ingestor.store, SECOND_ID, base_model)
    taught = evaluated.report.candidate_taught
    pair = evaluated.report.general_paired
    assert pair is not None and taught.stale is not None
    changing = [i for i in taught.items if i.group in ("new", "changed")]
    return {"parent": trained.parent_id, "snapshot_rows": curated.snapshot.n_rows, "steps": trained.steps,
            "train_s": train_s, "taught": taught.accuracy,
            "groups": {name: score.accuracy for name, score in taught.groups().items()},
            "new_and_changed": f"{sum(i.correct for i in changing)}/{len(changing)}",
            "stale_rate": taught.stale.stale_rate, "general_lost": len(pair.lost), "general_drop": pair.drop,
            "misses": {i.id: i.answer[:100] for i in taught.items if not i.correct},
            "gates": {g.name: [g.passed, g.reason] for g in evaluated.gates}}


if __name__ == "__main__":
    raise SystemExit(main())
