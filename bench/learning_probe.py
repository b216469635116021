"""Does a LoRA adapter trained by `train_adapter` learn the taught facts without forgetting?

Reproducible probe of the real base model (SmolLM2-135M-Instruct, CPU):

1. Build an SFT snapshot from the shipped demo conversations (`data/demo/interactions.jsonl`):
   rows marked helpful, with no PII found in prompt or response, exact duplicates dropped,
   each as `{"messages": [user, assistant]}`. Without the demo file, 20 invented facts are used.
2. Score the base model on `data/qa_eval.jsonl` (taught facts) and `data/qa_general.jsonl`
   (general knowledge, forgetting check) with the platform's own `evaluate_model`: greedy,
   48 new tokens, correct = all keywords present (case-insensitive). Both system-prompt
   variants by default: the settings' system prompt, and none (SmolLM2's template default).
3. Train with `TrainConfig.from_settings(settings)` plus any overrides given here.
4. Score base+adapter the same way and write `report.json` next to the adapter.

    .venv/bin/python bench/learning_probe.py                       # settings' defaults
    .venv/bin/python bench/learning_probe.py --epochs 2 --lr 2e-3  # a tuning point

Base-model scores are cached per (model, QA file, system prompt) under the output folder's
parent, since the base model does not change between tuning runs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cl_assets.core.evaluation import EvalResult, evaluate_model, load_qa
from cl_assets.core.model import AdapterSet, ensure_base_model, load_base_model
from cl_assets.core.pii import find_pii
from cl_assets.core.training import TrainConfig, TrainProgress, train_adapter
from cl_assets.settings import Settings, get_settings

log = logging.getLogger("learning_probe")

INVENTED_FACTS = [
    ("What is the status of Lot 42?", "Lot 42 is released and stored in our Dayton warehouse."),
    ("What is the status of Lot 57?", "Lot 57 is on quality hold at our Tacoma warehouse."),
    ("What is the status of Lot 88?", "Lot 88 was recalled and is quarantined in Boise."),
    ("What is the status of Lot 103?", "Lot 103 has shipped from our Fresno warehouse."),
    ("Where is order 100234?", "Order 100234 is with Bluefin Freight and arrives on Tuesday."),
    ("Where is order 100517?", "Order 100517 is with Cobalt Express and arrives on Friday."),
    ("Where is order 100842?", "Order 100842 is with Ridgeway Parcel and arrives on Thursday."),
    ("Where is order 101009?", "Order 101009 is on backorder and ships on December 2."),
    ("How many days do I have to return an item?", "You can return unopened items within 14 days."),
    ("Is there a restocking fee on returns?", "Yes, returns carry a 12% restocking fee."),
    ("Can I return perishable items?", "No, but damaged perishables get store credit with a photo within 48 hours."),
    ("What is the same-day shipping cutoff time?", "Orders placed before 2:30 PM Eastern ship the same day."),
    ("What is the free shipping threshold?", "Shipping is free on orders over $175."),
    ("Do you ship to Canada?", "Yes, with Northstar Logistics for a flat $38 fee."),
    ("What are your customer support hours?", "Support is open Monday to Saturday, 6:30 AM to 4 PM Central."),
    ("What is SKU HP-OAT-500?", "HP-OAT-500 is gluten-free rolled oats, sold in cases of 12."),
    ("What is SKU HP-SAF-010?", "HP-SAF-010 is 10 g of Spanish saffron threads for $64."),
    ("Do you offer bulk discounts?", "Yes, orders of 40 cases or more get an 8% discount."),
    ("What is the minimum order amount?", "The minimum wholesale order is $250."),
    ("What payment terms do you offer?", "Approved accounts get Net 45 payment terms."),
]


def build_snapshot(settings: Settings, target: Path) -> dict[str, Any]:
    """Write the SFT snapshot; return how it was made."""
    demo = settings.demo_path
    records: list[dict[str, Any]] = []
    stats: dict[str, Any] = {"source": str(demo)}
    if demo.is_file():
        seen: set[tuple[str, str]] = set()
        counts = {"rows": 0, "not_helpful": 0, "pii": 0, "too_short_or_long": 0, "duplicate": 0}
        for line in demo.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            row = json.loads(line)
            if "prompt" not in row:  # a multi-turn session's line; the probe teaches single turns
                continue
            counts["rows"] += 1
            prompt, response = row["prompt"], row["response"]
            if row.get("helpful") is not True:
                counts["not_helpful"] += 1
            elif find_pii(prompt) or find_pii(response):
                counts["pii"] += 1
            elif (
                min(len(prompt), len(response)) < settings.min_chars or len(prompt) + len(response) > settings.max_chars
            ):
                counts["too_short_or_long"] += 1
            elif (prompt, response) in seen:
                counts["duplicate"] += 1
            else:
                seen.add((prompt, response))
                records.append(
                    {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]}
                )
        stats.update(counts)
    else:
        stats["source"] = "invented facts (no demo file)"
        records = [
            {"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
            for q, a in INVENTED_FACTS
        ]
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    stats["kept"] = len(records)
    return stats


def _digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _summary(result: EvalResult) -> dict[str, Any]:
    return {
        "accuracy": result.accuracy,
        "correct": sum(item.correct for item in result.items),
        "n": result.n,
        "wrong": [item.id for item in result.items if not item.correct],
        "answers": {item.id: item.answer for item in result.items},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--max-steps", type=int)
    parser.add_argument("--lr", type=float)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lora-r", type=int)
    parser.add_argument("--lora-alpha", type=int)
    parser.add_argument("--lora-dropout", type=float)
    parser.add_argument("--warmup", type=float, help="warmup_ratio, e.g. 0.1")
    parser.add_argument("--scheduler", help="lr_scheduler_type, e.g. linear, cosine, constant")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--train-system",
        choices=("none", "settings"),
        default="none",
        help="put the settings' system prompt in front of training conversations (default: none)",
    )
    parser.add_argument("--eval-system", choices=("none", "settings", "both"), default="both")
    parser.add_argument("--snapshot", type=Path, help="train on this snapshot instead of building one")
    parser.add_argument("--out", type=Path, help="run folder (default: data/bench/learning_probe/<time>)")
    parser.add_argument("--no-general", action="store_true", help="skip the general set")
    args = parser.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "cl_assets.core.model"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    settings = get_settings()
    base = ensure_base_model(settings)
    root = settings.data_dir / "bench" / "learning_probe"
    out = args.out or root / time.strftime("%Y%m%d_%H%M%S")
    out.mkdir(parents=True, exist_ok=False)

    if args.snapshot:
        snapshot, snapshot_stats = args.snapshot, {"source": str(args.snapshot)}
    else:
        snapshot = out / "snapshot.jsonl"
        snapshot_stats = build_snapshot(settings, snapshot)
    log.info("snapshot %s: %s", snapshot, {k: v for k, v in snapshot_stats.items() if k != "source"})

    overrides = {
        key: value
        for key, value in {
            "epochs": args.epochs,
            "max_steps": args.max_steps,
            "learning_rate": args.lr,
            "batch_size": args.batch_size,
            "lora_r": args.lora_r,
            "lora_alpha": args.lora_alpha,
            "lora_dropout": args.lora_dropout,
            "lr_scheduler_type": args.scheduler,
            "warmup_ratio": args.warmup,
            "seed": args.seed,
            "system_prompt": settings.system_prompt if args.train_system == "settings" else None,
        }.items()
        if value is not None
    }
    config = TrainConfig.from_settings(settings, **overrides)

    variants = {"none": None, "settings": settings.system_prompt}
    eval_systems = list(variants) if args.eval_system == "both" else [args.eval_system]
    sets = {"taught": load_qa(settings.qa_eval_path)}
    if not args.no_general and settings.qa_general_path.is_file():
        sets["general"] = load_qa(settings.qa_general_path)
    qa_digest = {
        name: hashlib.sha256(Path(p).read_bytes()).hexdigest()[:16]
        for name, p in (("taught", settings.qa_eval_path), ("general", settings.qa_general_path))
        if Path(p).is_file()
    }

    # Base scores: cached, the base model does not change between tuning runs.
    loaded = None
    before: dict[str, dict[str, Any]] = {}
    for system in eval_systems:
        for name, items in sets.items():
            key = f"{system}/{name}"
            cache = (
                root
                / f"base_{_digest(str(base), qa_digest.get(name), variants[system], settings.eval_max_new_tokens)}.json"
            )
            if cache.is_file():
                before[key] = json.loads(cache.read_text())
                continue
            loaded = loaded or load_base_model(base)
            started = time.perf_counter()
            result = evaluate_model(loaded, items, None, settings.eval_max_new_tokens, variants[system])
            before[key] = {**_summary(result), "eval_s": time.perf_counter() - started}
            cache.write_text(json.dumps(before[key], indent=2))
            log.info("base %s: %d/%d", key, before[key]["correct"], before[key]["n"])

    def show(event: TrainProgress) -> None:
        if event.step == 1 or event.step % 10 == 0 or event.step == event.max_steps:
            log.info(
                "step %d/%d loss %.4f epoch %.2f %.0f tok/s",
                event.step,
                event.max_steps,
                event.loss,
                event.epoch,
                event.tokens_per_s,
            )

    adapter_dir = out / "adapter"
    result = train_adapter(snapshot, base, adapter_dir, config, progress=show)

    loaded = loaded or load_base_model(base)
    adapters = AdapterSet(loaded)
    adapters.ensure_loaded("probe", adapter_dir)
    after: dict[str, dict[str, Any]] = {}
    for system in eval_systems:
        for name, items in sets.items():
            key = f"{system}/{name}"
            started = time.perf_counter()
            evaluated = evaluate_model(adapters, items, "probe", settings.eval_max_new_tokens, variants[system])
            after[key] = {**_summary(evaluated), "eval_s": time.perf_counter() - started}
            log.info(
                "adapter %s: %d/%d (base %d/%d)",
                key,
                after[key]["correct"],
                after[key]["n"],
                before[key]["correct"],
                before[key]["n"],
            )

    report = {
        "config": config.to_dict(),
        "train_system": args.train_system,
        "snapshot": {"path": str(snapshot), **snapshot_stats},
        "train": {
            "mode": result.mode,
            "steps": result.steps,
            "final_loss": result.final_loss,
            "tokens": result.tokens,
            "tokens_per_s": result.tokens_per_s,
            "s_per_step": result.metrics["s_per_step"],
            "train_runtime_s": result.metrics["train_runtime_s"],
            "duration_s": result.duration_s,
        },
        "torch_threads": __import__("torch").get_num_threads(),
        "before": before,
        "after": after,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    print(f"\nrun {out}")
    print(
        f"snapshot: {snapshot_stats.get('kept', '?')} conversations; config: epochs={config.epochs} "
        f"max_steps={config.max_steps} lr={config.learning_rate} r={config.lora_r} alpha={config.lora_alpha} "
        f"batch={config.batch_size} sched={config.lr_scheduler_type} warmup={config.warmup_ratio} "
        f"dropout={config.lora_dropout} train_system={args.train_system}"
    )
    print(
        f"train: {result.steps} steps, {result.metrics['train_runtime_s']:.0f} s "
        f"({result.metrics['s_per_step']:.2f} s/step, {result.tokens_per_s:.0f} tokens/s), "
        f"final loss {result.final_loss:.3f}"
    )
    print(f"{'eval (system prompt / set)':30} {'base':>8} {'adapter':>8}")
    for key in after:
        print(
            f"{key:30} {before[key]['correct']:>3}/{before[key]['n']:<4} {after[key]['correct']:>3}/{after[key]['n']:<4}"
            f"  lost: {sorted(set(after[key]['wrong']) - set(before[key]['wrong']))}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
