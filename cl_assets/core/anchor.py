"""The base model's own behaviour on general prompts: replayed in every training run.

A LoRA update trained only on a shop's support conversations pulls the whole model towards
that voice ("Good question! ..."), and a 135M model forgets general answers (docs/learning.md).
Mixing the base model's own greedy answers to general prompts into the training rows anchors
the update: on those rows the target *is* the base's behaviour, so the adapter learns the new
facts while staying where it was elsewhere.

The prompts are synthesized by the base model itself, Magpie-style (Xu et al., 2024): it is
given its chat template up to the start of a user turn, after the chat's system prompt, and
samples what a user would ask. No prompt is written by us and none comes from the evaluation
sets (any that equals an evaluation prompt is dropped). Each prompt is answered greedily by the
base, and only answers that end by themselves (not cut at the token limit) are kept.

The set depends only on the base model, the system prompt and the generation settings, so it
is built once per base model and cached under `<data_dir>/anchors/<key>/anchor.jsonl`
(written atomically; a corrupt or foreign file is rebuilt, never trained on).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cl_assets.core.files import atomic_write_text

if TYPE_CHECKING:
    from cl_assets.core.model import LoadedModel

log = logging.getLogger(__name__)

ANCHOR_FILE = "anchor.jsonl"
ANCHOR_META = "anchor.json"
_FORMAT = 1


@dataclass(frozen=True)
class AnchorSpec:
    """What an anchor set is made of; its hash names the cache folder."""

    base_model: str  # fingerprint of the base model's files
    system_prompt: str
    rows: int = 192
    seed: int = 1234
    prompt_tokens: int = 40
    answer_tokens: int = 96
    temperature: float = 1.0
    top_p: float = 0.95

    @property
    def key(self) -> str:
        blob = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_fingerprint(model_dir: str | Path) -> str:
    """A cheap identity of a base model folder: its config and the names and sizes of its files."""
    folder = Path(model_dir)
    digest = hashlib.sha256()
    config = folder / "config.json"
    if config.is_file():
        digest.update(config.read_bytes())
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.is_file():
            digest.update(f"{path.name}:{path.stat().st_size}".encode())
    if not folder.is_dir():
        digest.update(str(model_dir).encode())
    return digest.hexdigest()[:16]


def _user_prefix(tokenizer: Any, system_prompt: str) -> list[int]:
    """The template up to the text of a user turn: `<|im_start|>system…<|im_end|>\\n<|im_start|>user\\n`."""
    marker = "\x00CL-USER\x00"
    text = tokenizer.apply_chat_template(
        [{"role": "system", "content": system_prompt}, {"role": "user", "content": marker}], tokenize=False
    )
    if marker not in text:
        raise ValueError("the chat template does not render the user's text verbatim; cannot synthesize prompts")
    return list(tokenizer(text[: text.index(marker)], add_special_tokens=False)["input_ids"])


def _clean_prompt(text: str) -> str | None:
    from cl_assets.core.pii import find_pii

    prompt = " ".join(text.split())
    if not 12 <= len(prompt) <= 300 or "<|" in prompt or find_pii(prompt):
        return None
    return prompt


def synthesize_prompts(
    base: LoadedModel, spec: AnchorSpec, count: int, exclude: Iterable[str] = (), batch_size: int = 32
) -> list[str]:
    """Sample `count` distinct user prompts from the base model's own user-turn prefix."""
    import torch

    tokenizer, model = base.tokenizer, base.model
    prefix = _user_prefix(tokenizer, spec.system_prompt)
    end_ids = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")} - {None}
    excluded = {" ".join(p.casefold().split()) for p in exclude}
    seen: set[str] = set()
    prompts: list[str] = []
    device = next(model.parameters()).device
    torch.manual_seed(spec.seed)
    for _round in range(max(4, 3 * count // batch_size + 2)):
        ids = torch.tensor([prefix] * batch_size, device=device)
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=True,
                temperature=spec.temperature,
                top_p=spec.top_p,
                top_k=None,
                max_new_tokens=spec.prompt_tokens,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=sorted(end_ids),
            )
        for row in out[:, len(prefix) :].tolist():
            stop = next((k for k, token in enumerate(row) if token in end_ids), None)
            if stop is None:
                continue  # ran out of tokens mid-question
            prompt = _clean_prompt(tokenizer.decode(row[:stop], skip_special_tokens=True))
            norm = " ".join(prompt.casefold().split()) if prompt else ""
            if prompt and norm not in seen and norm not in excluded:
                seen.add(norm)
                prompts.append(prompt)
        if len(prompts) >= count:
            break
    return prompts[:count]


def build_anchor_rows(
    base: LoadedModel,
    spec: AnchorSpec,
    exclude: Iterable[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """ChatML rows `{"messages": [system, user, assistant]}` answered greedily by the base."""
    from cl_assets.core.batch_decode import greedy_answers
    from cl_assets.core.pii import find_pii

    # Ask for more prompts than needed: some answers run past the token limit and are dropped.
    prompts = synthesize_prompts(base, spec, int(spec.rows * 1.6) + 8, exclude)
    if progress is not None:
        progress("prompts", len(prompts), len(prompts))
    conversations = [
        [{"role": "system", "content": spec.system_prompt}, {"role": "user", "content": p}] for p in prompts
    ]
    answers = greedy_answers(
        base.model,
        base.tokenizer,
        conversations,
        max_new_tokens=spec.answer_tokens,
        progress=(lambda done, total: progress("answers", done, total)) if progress is not None else None,
    )
    rows = []
    for messages, answer in zip(conversations, answers, strict=True):
        text = answer.text.strip()
        if answer.finish_reason != "stop" or not text or "<|" in text or find_pii(text):
            continue
        rows.append({"messages": [*messages, {"role": "assistant", "content": text}]})
    random.Random(spec.seed).shuffle(rows)
    return rows[: spec.rows]


def read_anchor_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a cached anchor file; raises ValueError on anything that is not one."""
    from cl_assets.core.training.data import Conversation, _parse_line

    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            conversation: Conversation = _parse_line(line, number, Path(path).name)
            rows.append({"messages": list(conversation.messages)})
    if not rows:
        raise ValueError(f"{path} holds no anchor rows")
    return rows


def ensure_anchor_set(
    anchors_dir: Path,
    base: LoadedModel | Callable[[], LoadedModel],
    spec: AnchorSpec,
    exclude: Iterable[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[Path, bool]:
    """The cached anchor file for `spec`, built first if missing or unreadable; (path, reused)."""
    folder = Path(anchors_dir) / spec.key
    path = folder / ANCHOR_FILE
    if path.is_file():
        try:
            read_anchor_rows(path)
            return path, True
        except (ValueError, OSError) as exc:
            log.warning("anchor set %s is unreadable (%s); building it again", path, exc)
    model = base() if callable(base) else base
    rows = build_anchor_rows(model, spec, exclude, progress)
    if not rows:
        raise RuntimeError("the base model produced no usable anchor rows; check the base model and system prompt")
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "spec": asdict(spec), "rows": len(rows)}
    atomic_write_text(folder / ANCHOR_META, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    log.info("anchor set: %d base-model rows written to %s", len(rows), path)
    return path, False
