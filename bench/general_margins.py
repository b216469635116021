"""How narrowly the base model gets the general set right: the smallest top-1 / top-2 log-prob gap
on each greedy answer's path, up to the token that completes its keyword (real SmolLM2).

An answer that passes a near tie flips under any small change of the weights, whatever the
change teaches; this is why docs/learning.md routes general questions to the base instead of
hoping a LoRA update leaves them alone. Prints a table of counts under each margin and the
narrowest items:

    python bench/general_margins.py
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

THRESHOLDS = (0.1, 0.25, 0.5, 1.0, 2.0)


def main() -> int:
    import torch

    from cl_assets.core.model import ensure_base_model, load_base_model
    from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings

    settings = Settings(_env_file=None, home=REPO, data_dir=REPO / "data", base_model=EMBEDDED_BASE_MODEL)  # type: ignore[call-arg]
    loaded = load_base_model(ensure_base_model(settings))
    tokenizer, model = loaded.tokenizer, loaded.model
    tokenizer.padding_side = "left"
    items = [json.loads(line) for line in (REPO / "data" / "qa_general.jsonl").read_text().splitlines()]
    margins: list[tuple[float, str, str]] = []
    for start in range(0, len(items), 16):
        chunk = items[start:start + 16]
        texts = [tokenizer.apply_chat_template([{"role": "system", "content": settings.system_prompt},
                                                {"role": "user", "content": item["prompt"]}],
                                               tokenize=False, add_generation_prompt=True) for item in chunk]
        enc = tokenizer(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=settings.eval_max_new_tokens, do_sample=False,
                                 output_scores=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
        generated = out.sequences[:, enc.input_ids.shape[1]:]
        top2 = torch.stack(out.scores, 1).float().log_softmax(-1).topk(2, -1).values
        gaps = top2[..., 0] - top2[..., 1]
        for row, item in enumerate(chunk):
            ids = generated[row].tolist()
            keyword = item["keywords"][0].casefold()
            upto = next((t for t in range(1, len(ids) + 1)
                         if keyword in tokenizer.decode(ids[:t], skip_special_tokens=True).casefold()), len(ids))
            margins.append((float(gaps[row, :upto].min()), item["prompt"],
                            tokenizer.decode(ids, skip_special_tokens=True)[:70]))
    margins.sort()
    print(f"{len(margins)} general items, base model greedy, under the chat's system prompt\n")
    print("| smallest top-1 / top-2 gap on the path (nats) | items |\n|---|---:|")
    for threshold in THRESHOLDS:
        print(f"| < {threshold} | {sum(m < threshold for m, _, _ in margins)} |")
    print("\nnarrowest:")
    for margin, prompt, answer in margins[:8]:
        print(f"  {margin:.3f}  {prompt} -> {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
