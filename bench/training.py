"""Training: tokens/s and model FLOPs utilisation of LoRA SFT, recipe against recipe.

All recipes train the real SmolLM2-135M-Instruct through `train_adapter` on the same snapshot
(the helpful, PII-free demo conversations), with the same seed, steps and LoRA shape:

- *straightforward*: fp32, no packing, random batches padded to their longest turn
  (`TrainConfig(padding_free=False, group_by_length=False)`): what one writes first;
- *length-grouped*: the same, batches of similar lengths (less padding; CL's earlier default);
- *CL as shipped*: `TrainConfig()` defaults: padding-free batches (the batch's turns
  concatenated, positions restarting at each turn, so the same batches and loss without
  padding), in the precision `detect_precision` picks (fp32 on a CPU);
- *bf16 autocast*: as shipped, with TRL's `bf16=True` on the CPU (torch autocast; the weights
  stay fp32, matmuls run in bf16, on AMX where the CPU has it). Injected here by handing
  `train_adapter` a bf16 `Precision`.

The machine's matmul throughput is measured in the same run for fp32 and bf16 (square
2048³ products, and the model's own MLP shape), and MFU = model FLOPs per second / that peak
for the recipe's compute dtype. Model FLOPs per real (non-padding) token: 4·N for a frozen
base (forward 2·N, backward through the activations 2·N; LoRA's own weight gradients are
negligible; a full fine-tune would be 6·N) plus attention, N = the parameters of every
linear layer including the LM head. Padding tokens count as waste, not work.

At full size each recipe trains the platform's configured epochs and is scored on the taught
QA set (`data/qa_eval.jsonl`, greedy, keywords) with the platform's `evaluate_model`; smaller
sizes run a few steps and do not score. Targets: ≥ 2× the straightforward recipe's tokens/s at
the same eval accuracy (within one item), and ≥ 50% MFU.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import REPO, Result

SIZES = {
    "tiny": {"max_steps": 3, "evaluate": False, "rows": 16, "matmul": 512},
    "small": {"max_steps": 8, "evaluate": False, "rows": None, "matmul": 2048},
    "full": {"max_steps": -1, "evaluate": True, "rows": None, "matmul": 2048},
}
RECIPES = {
    "straightforward (fp32, random batches, padding)": {
        "overrides": {"padding_free": False, "group_by_length": False}, "bf16": False, "padding": "random"},
    "length-grouped (fp32, padding)": {"overrides": {"padding_free": False}, "bf16": False, "padding": "grouped"},
    "CL as shipped (padding-free)": {"overrides": {}, "bf16": False, "padding": "none"},
    "bf16 autocast (padding-free)": {"overrides": {}, "bf16": True, "padding": "none"},
}
BASELINE = "straightforward (fp32, random batches, padding)"
SHIPPED = "CL as shipped (padding-free)"


# --------------------------------------------------------------------------- machine throughput


def matmul_gflops(dtype_name: str, n: int = 2048, repeat: int = 5) -> dict[str, float]:
    """Best-of GFLOP/s of an n×n×n product and of the model's MLP shape (512 tokens × 576 × 1536)."""
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where training runs
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    out = {}
    for label, (m, k, p) in {"square": (n, n, n), "mlp": (512, 576, 1536)}.items():
        a = torch.randn(m, k, dtype=dtype, device=device)
        b = torch.randn(k, p, dtype=dtype, device=device)
        for _ in range(2):
            a @ b
        sync()
        best = float("inf")
        inner = max(1, int(2e9 / (2 * m * k * p)))  # about 2 GFLOP per timing
        for _ in range(repeat):
            started = time.perf_counter()
            for _ in range(inner):
                a @ b
            sync()
            best = min(best, (time.perf_counter() - started) / inner)
        out[label] = 2 * m * k * p / best / 1e9
    return out


# --------------------------------------------------------------------------- data and model


def build_snapshot(target: Path, limit: int | None = None) -> dict[str, Any]:
    """The demo conversations rated helpful and free of PII, exact duplicates dropped, as ChatML JSONL."""
    from cl_assets.core.pii import find_pii

    demo = REPO / "data" / "demo" / "interactions.jsonl"
    seen, records = set(), []
    for line in demo.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "prompt" not in row:  # a multi-turn session's line: the single turns keep the figures comparable
            continue
        pair = (row["prompt"], row["response"])
        if row.get("helpful") is not True or pair in seen or find_pii(pair[0]) or find_pii(pair[1]):
            continue
        seen.add(pair)
        records.append({"messages": [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]})
    records = records[:limit] if limit else records
    target.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return {"conversations": len(records)}


def flops_per_token(model_dir: Path, mean_seq: float) -> tuple[float, int]:
    """Model FLOPs per trained token (see the module docstring) and N, the linear-layer parameters."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linear = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    layers, hidden = config.num_hidden_layers, config.hidden_size
    attention = 2 * 2 * layers * mean_seq * hidden  # QKᵀ and AV, forward, per token (causal: about half used)
    return 4 * linear + 2 * attention, linear


def token_lengths(snapshot: Path, model_dir: Path) -> list[int]:
    """Tokens per training row as TRL renders it (prompt with generation prompt + completion)."""
    from transformers import AutoTokenizer

    from cl_assets.core.training import load_rows, render_row

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = []
    for row in load_rows(snapshot, "sft"):
        prompt, completion = render_row(row, tokenizer)
        lengths.append(len(tokenizer(prompt + completion, add_special_tokens=False)["input_ids"]))
    return lengths


def padded_share(lengths: list[int], batch: int, grouped: bool, seed: int) -> float:
    """Share of padding in batches padded to their longest row: random order vs length-grouped (mega-batches
    of 50 batches sorted by length, as transformers' LengthGroupedSampler does)."""
    import random

    order = list(range(len(lengths)))
    random.Random(seed).shuffle(order)
    if grouped:
        mega = batch * 50
        order = [i for s in range(0, len(order), mega) for i in sorted(order[s : s + mega], key=lambda i: -lengths[i])]
    real = padded = 0
    for s in range(0, len(order), batch):
        rows = [lengths[i] for i in order[s : s + batch]]
        real += sum(rows)
        padded += max(rows) * len(rows)
    return 1 - real / padded


# --------------------------------------------------------------------------- training


def train_recipe(name: str, snapshot: Path, model_dir: Path, out: Path, max_steps: int) -> dict[str, Any]:
    from cl_assets.core.training import TrainConfig, train_adapter
    from cl_assets.core.training import trainer as trainer_module
    from cl_assets.core.training.device import Precision, detect_precision
    from cl_assets.settings import Settings

    recipe = RECIPES[name]
    settings = Settings(_env_file=None, home=out.parent)  # type: ignore[call-arg]
    overrides = dict(recipe["overrides"])
    if max_steps > 0:
        overrides["max_steps"] = max_steps
    config = TrainConfig.from_settings(settings, **overrides)
    shipped = detect_precision()
    precision = shipped
    if recipe["bf16"]:
        if shipped.device != "cpu":
            precision = shipped  # on CUDA the platform trains in bf16 already
        else:
            precision = Precision("lora-bf16-autocast-cpu", "cpu", "float32", bf16=True, quantize_4bit=False)
    original = trainer_module.detect_precision
    trainer_module.detect_precision = lambda *_: precision
    steps: list[Any] = []
    try:
        started = time.perf_counter()
        result = train_adapter(snapshot, model_dir, out, config, progress=steps.append)
        wall = time.perf_counter() - started
    finally:
        trainer_module.detect_precision = original
    m = result.metrics
    # Steady state: from the end of the first step (kernel selection, allocator warm-up) to the last.
    if len(steps) >= 2 and steps[-1].elapsed_s > steps[0].elapsed_s:
        steady = (steps[-1].tokens - steps[0].tokens) / (steps[-1].elapsed_s - steps[0].elapsed_s)
        steady_step = (steps[-1].elapsed_s - steps[0].elapsed_s) / (steps[-1].step - steps[0].step)
    else:
        steady, steady_step = result.tokens_per_s, m["s_per_step"]
    return {
        "mode": result.mode, "compute_dtype": "bfloat16" if precision.bf16 else "float32", "steps": result.steps,
        "epochs": m["epochs"], "tokens": result.tokens, "tokens_per_s": steady, "tokens_per_s_whole_run": result.tokens_per_s,
        "s_per_step": steady_step, "train_runtime_s": m["train_runtime_s"], "final_loss": result.final_loss,
        "wall_s": wall, "config": config.to_dict(),
    }


def evaluate(model_dir: Path, adapters: dict[str, Path]) -> dict[str, dict[str, Any]]:
    from cl_assets.core.evaluation import evaluate_model, load_qa
    from cl_assets.core.model import AdapterSet, load_base_model

    items = load_qa(REPO / "data" / "qa_eval.jsonl")
    loaded = load_base_model(model_dir)
    adapter_set = AdapterSet(loaded)
    scores = {}
    for i, (name, path) in enumerate(adapters.items()):
        adapter_id = f"recipe-{i}"
        adapter_set.ensure_loaded(adapter_id, path)
        evaluated = evaluate_model(adapter_set, items, adapter_id, 48, None)
        scores[name] = {"correct": sum(item.correct for item in evaluated.items), "n": evaluated.n,
                        "accuracy": evaluated.accuracy}
    return scores


def run(size: str = "small", model: str | None = None) -> Result:
    import torch

    from cl_assets.core.model import ensure_base_model
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

    cfg = SIZES[size]
    result = Result("training", "4. Training: tokens/s and MFU, recipe against recipe", size)
    model_dir = Path(model) if model else ensure_base_model(
        Settings(_env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL)  # type: ignore[call-arg]
    )

    peaks = {dtype: matmul_gflops(dtype, cfg["matmul"]) for dtype in ("float32", "bfloat16")}
    mm = result.table(f"Matmul throughput of this machine ({torch.get_num_threads()} torch threads, best of 5)",
                      ["dtype", f"{cfg['matmul']}³ GFLOP/s", "512×576×1536 (model MLP) GFLOP/s"])
    for dtype, p in peaks.items():
        mm.add(dtype, p["square"], p["mlp"])

    with tempfile.TemporaryDirectory(prefix="cl-bench-train-") as tmp:
        root = Path(tmp)
        snapshot = root / "snapshot.jsonl"
        snap = build_snapshot(snapshot, cfg["rows"])
        lengths = token_lengths(snapshot, model_dir)
        mean_seq = sum(lengths) / len(lengths)
        per_token, linear = flops_per_token(model_dir, mean_seq)
        runs: dict[str, dict[str, Any]] = {}
        adapters: dict[str, Path] = {}
        for i, name in enumerate(RECIPES):
            out = root / f"adapter-{i}"
            runs[name] = train_recipe(name, snapshot, model_dir, out, cfg["max_steps"])
            adapters[name] = out
        scores = evaluate(model_dir, adapters) if cfg["evaluate"] else {}

    batch = runs[BASELINE]["config"]["batch_size"]
    table = result.table(
        f"LoRA SFT on {snap['conversations']} conversations ({len(lengths)} rows, mean {mean_seq:.0f} tokens), "
        f"batch {batch}, same seed and steps",
        ["recipe", "steps", "s/step", "tokens/s (real tokens, after step 1)", "× straightforward", "padding share",
         "MFU (vs measured peak of its dtype)", "MFU vs model-shape matmul", "final loss", "taught QA (full size)"],
    )
    base_tps = runs[BASELINE]["tokens_per_s"]
    for name, r in runs.items():
        dtype = r["compute_dtype"]
        mfu = r["tokens_per_s"] * per_token / (peaks[dtype]["square"] * 1e9)
        r["mfu"] = mfu
        r["mfu_model_shape"] = r["tokens_per_s"] * per_token / (peaks[dtype]["mlp"] * 1e9)
        padding = RECIPES[name]["padding"]
        r["padding_share"] = 0.0 if padding == "none" else padded_share(lengths, batch, padding == "grouped", r["config"]["seed"])
        score = scores.get(name)
        table.add(name, r["steps"], r["s_per_step"], r["tokens_per_s"], f"{r['tokens_per_s'] / base_tps:.2f}×",
                  f"{r['padding_share']:.0%}", f"{mfu:.1%} of {dtype}", f"{r['mfu_model_shape']:.0%}", r["final_loss"],
                  f"{score['correct']}/{score['n']}" if score else "not scored")
    result.data = {"peaks_gflops": peaks, "flops_per_token": per_token, "linear_params": linear, "runs": runs,
                   "scores": scores, "mean_seq_tokens": mean_seq}
    result.notes.append(
        "MFU vs model-shape matmul: the same FLOPs against what this machine reaches on the model's own MLP "
        "product (512 tokens × 576 × 1536) in that dtype, i.e. the ceiling for a model this narrow."
    )
    result.notes.append(
        f"Model FLOPs per real token: {per_token / 1e9:.3f} GFLOP (4 × {linear / 1e6:.1f}M linear parameters + "
        f"attention at {mean_seq:.0f} tokens). Padding share: the padding a batch of {batch} carries in random "
        "vs length-grouped order, computed from the rows' token lengths."
    )

    judged = size == "full"
    for name in runs:
        if name == BASELINE:
            continue
        speedup = runs[name]["tokens_per_s"] / base_tps
        same = None
        if scores:
            same = scores[name]["correct"] >= scores[BASELINE]["correct"] - 1
        acc = (f", taught QA {scores[name]['correct']} vs {scores[BASELINE]['correct']}/{scores[BASELINE]['n']}"
               if scores else "")
        result.check(f"{name}: tokens/s vs straightforward", f"{speedup:.2f}×{acc}", "≥ 2× at the same accuracy",
                     (speedup >= 2 and bool(same)) if judged else None)
    shipped_mfu = runs[SHIPPED]["mfu"]
    result.check("MFU of CL as shipped", f"{shipped_mfu:.1%}", "≥ 50%", shipped_mfu >= 0.5 if judged else None)
    best_name = max(runs, key=lambda n: runs[n]["mfu"])
    best_mfu = runs[best_name]["mfu"]
    result.check("best MFU of any recipe", f"{best_mfu:.1%} ({best_name})", "≥ 50%", best_mfu >= 0.5 if judged else None)
    if judged and best_mfu < 0.5:
        result.profiles["one training step, CL as shipped (cProfile, own time)"] = profile_step(model_dir, snapshot_rows=32)
    return result


def profile_step(model_dir: Path, snapshot_rows: int) -> str:
    """Where a step's time goes: a cProfile of a 3-step run of the shipped recipe (model load excluded)."""
    import torch

    from cl_assets.core.training import TrainConfig, train_adapter
    from cl_assets.settings import Settings

    with tempfile.TemporaryDirectory(prefix="cl-bench-profile-") as tmp:
        root = Path(tmp)
        snapshot = root / "snapshot.jsonl"
        build_snapshot(snapshot, snapshot_rows)
        config = TrainConfig.from_settings(Settings(_env_file=None, home=root), max_steps=3)  # type: ignore[call-arg]
        with torch.autograd.profiler.profile(record_shapes=False) as prof:
            train_adapter(snapshot, model_dir, root / "adapter", config)
        return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def _options(parser: Any) -> None:
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2); tests pass a tiny model")


if __name__ == "__main__":
    raise SystemExit(common.main(run, _options))
