"""Keyword QA evaluation of the base model and its adapters, and the comparison report.

Scoring: an answer is correct when ALL of an item's keywords appear in it, case-insensitively;
its partial credit is the fraction of keywords present. Decoding is greedy, so a rerun of the
same model on the same items gives the same answers.

`compare_adapters` scores base, candidate and the deployed adapter in one run on the same
prompts, for the taught set (facts from the conversations) and the general set (forgetting),
and writes `report.json`, `report.md` and `accuracy.png` into one folder, atomically.
Pure domain code: no Dagster, no Gradio.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cl_assets.core.files import atomic_directory
from cl_assets.core.model import AdapterSet, LoadedModel, generate
from cl_assets.core.model.precision import precision_of
from cl_assets.core.registry import BASE_LABEL
from cl_assets.settings import Settings

log = logging.getLogger(__name__)

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
REPORT_PNG = "accuracy.png"
DRIFT_PNG = "drift.png"
#: Answer tokens compared for "the candidate's answer starts like the base's".
DRIFT_PREFIX_TOKENS = 8

Progress = Callable[[str], None]


class QAFormatError(ValueError):
    """A QA file line is not a valid item; the message names the file and line."""


# --------------------------------------------------------------------------- items and scoring


@dataclass(frozen=True)
class QAItem:
    """One question and the keywords a correct answer must all contain.

    `stale`: keywords of an answer that used to be right (a fact that changed); an answer that
    contains one repeats the old fact. `group`: a label to report accuracy by (e.g. the demo's
    second cycle: `kept`, `changed`, `new`)."""

    prompt: str
    keywords: tuple[str, ...]
    id: str
    stale: tuple[str, ...] = ()
    group: str | None = None

    def __post_init__(self) -> None:
        if not self.prompt.strip():
            raise ValueError(f"QA item {self.id}: empty prompt.")
        if not self.keywords or any(not k.strip() for k in self.keywords):
            raise ValueError(f"QA item {self.id}: needs at least one non-empty keyword.")
        if any(not k.strip() for k in self.stale):
            raise ValueError(f"QA item {self.id}: stale keywords must be non-empty.")


def load_qa(path: str | Path) -> list[QAItem]:
    """Read a QA JSONL file: one `{"id"?, "prompt" (or "question"), "keywords", "stale_keywords"?,
    "group"?}` object a line.

    `keywords` and `stale_keywords` are lists of strings (or one string). `id` defaults to `<file stem>-<line>`.
    Blank lines are skipped. Any bad line raises `QAFormatError` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"QA file {path} does not exist.")
    items: list[QAItem] = []
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise QAFormatError(f"{where}: not valid JSON ({exc.msg}).") from exc
            if not isinstance(row, dict):
                raise QAFormatError(f"{where}: expected a JSON object, got {type(row).__name__}.")
            prompt = row.get("prompt", row.get("question"))
            if not isinstance(prompt, str) or not prompt.strip():
                raise QAFormatError(f"{where}: needs a non-empty string \"prompt\".")
            keywords = row.get("keywords")
            if isinstance(keywords, str):
                keywords = [keywords]
            if (
                not isinstance(keywords, list)
                or not keywords
                or not all(isinstance(k, str) and k.strip() for k in keywords)
            ):
                raise QAFormatError(f"{where}: \"keywords\" must be a non-empty list of non-empty strings.")
            stale = row.get("stale_keywords", [])
            if isinstance(stale, str):
                stale = [stale]
            if not isinstance(stale, list) or not all(isinstance(k, str) and k.strip() for k in stale):
                raise QAFormatError(f"{where}: \"stale_keywords\" must be a list of non-empty strings.")
            group = row.get("group")
            if group is not None and (not isinstance(group, str) or not group.strip()):
                raise QAFormatError(f"{where}: \"group\" must be a non-empty string.")
            item_id = row.get("id", f"{path.stem}-{lineno}")
            if not isinstance(item_id, (str, int)) or not str(item_id).strip():
                raise QAFormatError(f"{where}: \"id\" must be a non-empty string.")
            item_id = str(item_id)
            if item_id in seen:
                raise QAFormatError(f"{where}: duplicate id {item_id!r}.")
            seen.add(item_id)
            items.append(QAItem(prompt=prompt, keywords=tuple(k.strip() for k in keywords), id=item_id,
                                stale=tuple(k.strip() for k in stale), group=group))
    if not items:
        raise QAFormatError(f"{path}: no QA items.")
    return items


@dataclass(frozen=True)
class Score:
    correct: bool
    partial: float
    matched: tuple[str, ...]


def score_answer(answer: str, keywords: Sequence[str]) -> Score:
    """Correct when every keyword occurs (case-insensitively); partial = share that occurs."""
    if not keywords:
        raise ValueError("score_answer needs at least one keyword.")
    text = answer.casefold()
    matched = tuple(k for k in keywords if k.casefold() in text)
    return Score(correct=len(matched) == len(keywords), partial=len(matched) / len(keywords), matched=matched)


# --------------------------------------------------------------------------- one model


@dataclass(frozen=True)
class ItemResult:
    id: str
    prompt: str
    keywords: tuple[str, ...]
    answer: str
    correct: bool
    partial: float
    matched: tuple[str, ...]
    latency_ms: float
    ttft_ms: float
    completion_tokens: int
    tokens_per_s: float
    stale_keywords: tuple[str, ...] = ()
    stale: bool = False  # the answer holds a stale keyword: it repeats a fact that changed
    group: str | None = None
    routed_to_base: bool = False  # outside the adapter's scope: the base model answered (`core/scope.py`)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["keywords"], d["matched"], d["stale_keywords"] = list(self.keywords), list(self.matched), list(self.stale_keywords)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ItemResult:
        return cls(**{**d, "keywords": tuple(d["keywords"]), "matched": tuple(d["matched"]),
                      "stale_keywords": tuple(d.get("stale_keywords", ()))})


@dataclass(frozen=True)
class GroupScore:
    """Accuracy on the items of one group, and how many of its answers repeat a stale fact."""

    n: int
    correct: int
    with_stale: int  # items that have stale keywords
    stale: int  # of those, answers that contain one

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0

    @property
    def stale_rate(self) -> float | None:
        return self.stale / self.with_stale if self.with_stale else None

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "correct": self.correct, "accuracy": self.accuracy, "with_stale": self.with_stale,
                "stale": self.stale, "stale_rate": self.stale_rate}


@dataclass(frozen=True)
class EvalResult:
    """The score of one model (base or one adapter) on one QA set."""

    adapter: str | None  # None: the base model
    accuracy: float
    partial_accuracy: float
    n: int
    items: tuple[ItemResult, ...]
    latency_p50_ms: float
    latency_p95_ms: float
    ttft_p50_ms: float
    tokens_per_s: float  # mean over items
    max_new_tokens: int
    system_prompt: str | None = None
    batch_size: int | None = None  # None: one answer at a time (latency figures are per answer)

    @property
    def label(self) -> str:
        return self.adapter or BASE_LABEL

    @property
    def correct_ids(self) -> frozenset[str]:
        return frozenset(i.id for i in self.items if i.correct)

    @property
    def routed_to_base(self) -> int:
        """Items outside the adapter's scope, answered by the base model."""
        return sum(i.routed_to_base for i in self.items)

    def groups(self) -> dict[str, GroupScore]:
        """Scores per item group (only when the QA set names groups), in the set's order."""
        out: dict[str, list[ItemResult]] = {}
        for item in self.items:
            if item.group is not None:
                out.setdefault(item.group, []).append(item)
        return {name: _group_score(items) for name, items in out.items()}

    @property
    def stale(self) -> GroupScore | None:
        """How many answers to changed facts still give the old answer (None: no such items)."""
        score = _group_score(self.items)
        return score if score.with_stale else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.adapter,
            "label": self.label,
            "accuracy": self.accuracy,
            "partial_accuracy": self.partial_accuracy,
            "n": self.n,
            "correct": sum(i.correct for i in self.items),
            "latency": {"p50_ms": self.latency_p50_ms, "p95_ms": self.latency_p95_ms, "ttft_p50_ms": self.ttft_p50_ms},
            "tokens_per_s": self.tokens_per_s,
            "max_new_tokens": self.max_new_tokens,
            "system_prompt": self.system_prompt,
            "batch_size": self.batch_size,
            "routed_to_base": self.routed_to_base,
            "groups": {name: g.to_dict() for name, g in self.groups().items()},
            "stale": self.stale.to_dict() if self.stale else None,
            "items": [i.to_dict() for i in self.items],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EvalResult:
        return cls(
            adapter=d["adapter"],
            accuracy=d["accuracy"],
            partial_accuracy=d["partial_accuracy"],
            n=d["n"],
            items=tuple(ItemResult.from_dict(i) for i in d["items"]),
            latency_p50_ms=d["latency"]["p50_ms"],
            latency_p95_ms=d["latency"]["p95_ms"],
            ttft_p50_ms=d["latency"]["ttft_p50_ms"],
            tokens_per_s=d["tokens_per_s"],
            max_new_tokens=d["max_new_tokens"],
            system_prompt=d.get("system_prompt"),
            batch_size=d.get("batch_size"),
        )


def _group_score(items: Sequence[ItemResult]) -> GroupScore:
    return GroupScore(n=len(items), correct=sum(i.correct for i in items),
                      with_stale=sum(1 for i in items if i.stale_keywords), stale=sum(1 for i in items if i.stale))


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy's default."""
    if not values:
        raise ValueError("percentile of no values.")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def _messages(item: QAItem, system_prompt: str | None) -> list[dict[str, str]]:
    return ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
        {"role": "user", "content": item.prompt}
    ]


def _check_target(target: LoadedModel | AdapterSet, adapter_id: str | None) -> None:
    if not isinstance(target, AdapterSet) and adapter_id is not None:
        raise ValueError("A LoadedModel has no adapters; pass an AdapterSet to evaluate an adapter.")


Answer = tuple[str, float, float, int, float, bool]  # text, latency, TTFT, tokens, tokens/s, routed to base


def _answer_one_by_one(
    target: LoadedModel | AdapterSet, items: Sequence[QAItem], adapter_id: str | None,
    max_new_tokens: int, system_prompt: str | None,
) -> list[Answer]:
    answers = []
    for item in items:
        messages = _messages(item, system_prompt)
        if isinstance(target, AdapterSet):
            answering = target.route(adapter_id, messages)  # as the chat does: routing is part of the latency
            gen = target.generate(messages, answering, max_new_tokens=max_new_tokens, temperature=0.0)
        else:
            answering = adapter_id
            gen = generate(target.model, target.tokenizer, messages, max_new_tokens=max_new_tokens, temperature=0.0)
        answers.append((gen.text, gen.latency_ms, gen.ttft_ms, gen.completion_tokens, gen.tokens_per_s,
                        answering != adapter_id))
    return answers


def _answer_batched(
    target: LoadedModel | AdapterSet, items: Sequence[QAItem], adapter_id: str | None,
    max_new_tokens: int, system_prompt: str | None, batch_size: int, progress: Progress | None,
    base_answers: EvalResult | None = None,
) -> list[Answer]:
    from cl_assets.core.batch_decode import greedy_answers

    conversations = [_messages(item, system_prompt) for item in items]
    label = adapter_id or BASE_LABEL
    report = (lambda done, total: progress(f"{label}: {done}/{total} answered")) if progress else None
    if not isinstance(target, AdapterSet):
        batch = greedy_answers(target.model, target.tokenizer, conversations, max_new_tokens=max_new_tokens,
                               batch_size=batch_size, progress=report)
        return [(a.text, a.latency_ms, a.latency_ms, a.completion_tokens, a.tokens_per_s, False) for a in batch]
    # Each conversation goes to whoever the adapter's scope sends it to, as in the chat.
    inside = target.in_scope(adapter_id, conversations) if adapter_id is not None else [True] * len(items)
    answers: list[Answer | None] = [None] * len(items)
    if base_answers is not None and [i.id for i in base_answers.items] == [i.id for i in items]:
        for i, flag in enumerate(inside):
            if not flag:
                b = base_answers.items[i]
                answers[i] = (b.answer, b.latency_ms, b.ttft_ms, b.completion_tokens, b.tokens_per_s, True)
    for answering, wanted in ((adapter_id, True), (None, False)):
        picked = [i for i, flag in enumerate(inside) if flag == wanted and answers[i] is None]
        if not picked:
            continue
        with target.using(answering) as model:
            batch = greedy_answers(model, target.tokenizer, [conversations[i] for i in picked],
                                   max_new_tokens=max_new_tokens, batch_size=batch_size, progress=report)
        for i, a in zip(picked, batch, strict=True):
            # A batch has no per-answer first token: its wall time stands for latency and TTFT alike.
            answers[i] = (a.text, a.latency_ms, a.latency_ms, a.completion_tokens, a.tokens_per_s, not wanted)
    return [a for a in answers if a is not None]


def evaluate_model(
    target: LoadedModel | AdapterSet,
    items: Sequence[QAItem],
    adapter_id: str | None = None,
    max_new_tokens: int = 48,
    system_prompt: str | None = None,
    *,
    batch_size: int | None = None,
    progress: Progress | None = None,
    base_answers: EvalResult | None = None,
) -> EvalResult:
    """Answer every item greedily with `adapter_id` (None: the base model) and score it.

    `base_answers`: the base model's result on the same items and settings (batched only). An
    item outside the adapter's scope is the base's to answer, so its answer is taken from there
    instead of being generated again.

    `target` is a plain `LoadedModel` (base only) or an `AdapterSet` whose adapter `adapter_id`
    is loaded. With `system_prompt=None` the chat template's own default applies. `batch_size`
    answers that many items per forward pass (same greedy answers, far less time; latency is
    then per batch); None answers one at a time, as the chat does, for latency and TTFT.
    """
    if not items:
        raise ValueError("evaluate_model needs at least one QA item.")
    _check_target(target, adapter_id)
    if batch_size is None:
        answers = _answer_one_by_one(target, items, adapter_id, max_new_tokens, system_prompt)
    else:
        answers = _answer_batched(target, items, adapter_id, max_new_tokens, system_prompt, batch_size, progress,
                                  base_answers)
    results: list[ItemResult] = []
    for item, (text, latency_ms, ttft_ms, completion_tokens, tokens_per_s, routed) in zip(items, answers, strict=True):
        score = score_answer(text, item.keywords)
        folded = text.casefold()
        results.append(
            ItemResult(
                id=item.id,
                prompt=item.prompt,
                keywords=item.keywords,
                answer=text,
                correct=score.correct,
                partial=score.partial,
                matched=score.matched,
                latency_ms=latency_ms,
                ttft_ms=ttft_ms,
                completion_tokens=completion_tokens,
                tokens_per_s=tokens_per_s,
                stale_keywords=item.stale,
                stale=any(k.casefold() in folded for k in item.stale),
                group=item.group,
                routed_to_base=routed,
            )
        )
        log.debug("%s %s: %s", adapter_id or BASE_LABEL, item.id, "ok" if score.correct else "miss")
    latencies = [r.latency_ms for r in results]
    return EvalResult(
        adapter=adapter_id,
        accuracy=sum(r.correct for r in results) / len(results),
        partial_accuracy=sum(r.partial for r in results) / len(results),
        n=len(results),
        items=tuple(results),
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        ttft_p50_ms=percentile([r.ttft_ms for r in results], 50),
        tokens_per_s=statistics.fmean(r.tokens_per_s for r in results),
        max_new_tokens=max_new_tokens,
        system_prompt=system_prompt,
        batch_size=batch_size,
    )


def lost_items(reference: EvalResult, candidate: EvalResult) -> list[str]:
    """Ids of items `reference` answered correctly and `candidate` did not (regression gate)."""
    ref_ids = [i.id for i in reference.items]
    if set(ref_ids) != {i.id for i in candidate.items}:
        raise ValueError("lost_items compares results on the same QA items only.")
    candidate_ok = candidate.correct_ids
    return [i for i in ref_ids if i in reference.correct_ids and i not in candidate_ok]


def gained_items(reference: EvalResult, candidate: EvalResult) -> list[str]:
    """Ids of items `candidate` answered correctly and `reference` did not."""
    return lost_items(candidate, reference)



def mcnemar_p(lost: int, gained: int) -> float:
    """One-sided exact McNemar test: how likely `lost` or more of the discordant pairs go against
    the candidate if it were as good as the reference (binomial, p = 1/2). Small means worse."""
    n = lost + gained
    if n == 0:
        return 1.0
    return sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n


@dataclass(frozen=True)
class PairedResult:
    """Candidate vs reference item by item on one set: what was lost, what was gained, and whether
    the difference is more than chance (McNemar)."""

    n: int
    lost: tuple[str, ...]
    gained: tuple[str, ...]

    @property
    def drop(self) -> float:
        return (len(self.lost) - len(self.gained)) / self.n

    @property
    def p_worse(self) -> float:
        return mcnemar_p(len(self.lost), len(self.gained))

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "lost": list(self.lost), "gained": list(self.gained), "drop": self.drop,
                "p_worse": self.p_worse}


def paired(reference: EvalResult, candidate: EvalResult) -> PairedResult:
    return PairedResult(reference.n, tuple(lost_items(reference, candidate)), tuple(gained_items(reference, candidate)))


# --------------------------------------------------------------------------- drift


@dataclass(frozen=True)
class DriftItem:
    id: str
    tokens: int
    base_nll: float
    candidate_nll: float
    prefix_kept: bool

    @property
    def extra_nll_per_token(self) -> float:
        return (self.candidate_nll - self.base_nll) / self.tokens


@dataclass(frozen=True)
class Drift:
    """How far the candidate moved from the base on prompts training never saw, without keywords:
    the base's own greedy answers are scored under both models. `extra_nll_per_token` is the mean
    extra negative log-likelihood per answer token (nats; 0 = the base's behaviour kept exactly),
    `prefix_kept` the share of answers whose first `prefix_tokens` tokens the candidate would still
    choose greedily."""

    prefix_tokens: int
    items: tuple[DriftItem, ...]

    @property
    def n(self) -> int:
        return len(self.items)

    @property
    def tokens(self) -> int:
        return sum(i.tokens for i in self.items)

    @property
    def extra_nll_per_token(self) -> float:
        return sum(i.candidate_nll - i.base_nll for i in self.items) / max(self.tokens, 1)

    @property
    def base_nll_per_token(self) -> float:
        return sum(i.base_nll for i in self.items) / max(self.tokens, 1)

    @property
    def prefix_kept(self) -> float:
        return sum(i.prefix_kept for i in self.items) / max(self.n, 1)

    def summary(self) -> dict[str, Any]:
        return {"n": self.n, "tokens": self.tokens, "extra_nll_per_token": self.extra_nll_per_token,
                "base_nll_per_token": self.base_nll_per_token, "prefix_kept": self.prefix_kept,
                "prefix_tokens": self.prefix_tokens}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "items": [asdict(i) for i in self.items]}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Drift:
        return cls(d["prefix_tokens"], tuple(DriftItem(**i) for i in d["items"]))


def _score_with(
    adapters: AdapterSet, adapter_id: str | None, conversations: list[list[dict[str, str]]], answers: list[str],
    batch_size: int,
) -> list[Any]:
    from cl_assets.core.batch_decode import score_answers

    if not conversations:
        return []
    with adapters.using(adapter_id) as model:
        return score_answers(model, adapters.tokenizer, conversations, answers, prefix=DRIFT_PREFIX_TOKENS,
                             batch_size=batch_size)


def measure_drift(
    adapters: AdapterSet,
    candidate_id: str,
    base_answers: EvalResult,
    *,
    batch_size: int = 16,
    base_scores: list[tuple[float, int]] | None = None,
) -> tuple[Drift, list[tuple[float, int]]]:
    """Score the base's answers in `base_answers` under the candidate (and the base, unless
    `base_scores` is given); returns the drift and the base's scores for caching.

    A prompt outside the candidate's scope is answered by the base itself, so there the served
    model is the base: no drift, by construction, and nothing to score."""
    conversations = [_messages(item, base_answers.system_prompt) for item in base_answers.items]
    answers = [item.answer for item in base_answers.items]
    if base_scores is None:
        base_scores = [(s.nll, s.tokens) for s in _score_with(adapters, None, conversations, answers, batch_size)]
    inside = adapters.in_scope(candidate_id, conversations)
    picked = [i for i, flag in enumerate(inside) if flag]
    scored = dict(zip(picked, _score_with(adapters, candidate_id, [conversations[i] for i in picked],
                                          [answers[i] for i in picked], batch_size), strict=True))
    items = []
    for i, (item, (b_nll, tokens)) in enumerate(zip(base_answers.items, base_scores, strict=True)):
        c = scored.get(i)
        items.append(DriftItem(item.id, c.tokens, b_nll, c.nll, c.prefix_kept) if c is not None
                     else DriftItem(item.id, tokens, b_nll, b_nll, True))
    return Drift(DRIFT_PREFIX_TOKENS, tuple(items)), base_scores


# --------------------------------------------------------------------------- base-model cache


def _base_cache_key(adapters: AdapterSet, kind: str, items: Sequence[QAItem], max_new_tokens: int,
                    system_prompt: str | None, batch_size: int | None) -> str:
    from cl_assets.core.anchor import base_fingerprint

    precision = precision_of(adapters.base.model)
    blob = json.dumps(
        {"format": 1, "kind": kind, "base": base_fingerprint(adapters.base.source), "system": system_prompt,
         "max_new_tokens": max_new_tokens, "batch_size": batch_size,
         # the precision only where it is not fp32, so fp32 caches stay valid
         **({"precision": precision} if precision != "float32" else {}),
         # stale keywords and groups only where a set has them, so other sets keep their cached results
         "items": [[i.id, i.prompt, list(i.keywords)] + ([list(i.stale), i.group] if i.stale or i.group else [])
                   for i in items]},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_cache(cache_dir: Path | None, key: str) -> dict[str, Any] | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir) / f"{key}.json"
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_cache(cache_dir: Path | None, key: str, value: dict[str, Any]) -> None:
    if cache_dir is not None:
        from cl_assets.core.files import atomic_write_text

        atomic_write_text(Path(cache_dir) / f"{key}.json", json.dumps(value))


# --------------------------------------------------------------------------- comparison


@dataclass(frozen=True)
class Comparison:
    """Base, candidate and (optionally) deployed adapter on the taught and the general set."""

    candidate: str
    deployed: str | None
    taught: dict[str, EvalResult]  # label ("base", adapter id) -> result
    general: dict[str, EvalResult] = field(default_factory=dict)
    out_dir: Path | None = None
    drift: Drift | None = None
    precision: str = "float32"  # the precision every answer was given in (the chat's serving precision)

    @property
    def base_taught(self) -> EvalResult:
        return self.taught[BASE_LABEL]

    @property
    def candidate_taught(self) -> EvalResult:
        return self.taught[self.candidate]

    @property
    def deployed_taught(self) -> EvalResult | None:
        return self.taught.get(self.deployed) if self.deployed else None

    @property
    def forgetting(self) -> float | None:
        """Base general accuracy minus candidate general accuracy (None without a general set)."""
        if not self.general:
            return None
        return self.general[BASE_LABEL].accuracy - self.general[self.candidate].accuracy

    @property
    def lost_vs_deployed(self) -> list[str]:
        """Taught items the deployed adapter got right that the candidate lost."""
        deployed = self.deployed_taught
        return lost_items(deployed, self.candidate_taught) if deployed else []

    @property
    def lost_vs_base_general(self) -> list[str]:
        if not self.general:
            return []
        return lost_items(self.general[BASE_LABEL], self.general[self.candidate])

    @property
    def general_paired(self) -> PairedResult | None:
        """Candidate vs base item by item on the general set (the forgetting gate judges this)."""
        if not self.general:
            return None
        return paired(self.general[BASE_LABEL], self.general[self.candidate])

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "deployed": self.deployed,
            "summary": {
                "precision": self.precision,
                "taught_accuracy": {k: v.accuracy for k, v in self.taught.items()},
                "taught_partial_accuracy": {k: v.partial_accuracy for k, v in self.taught.items()},
                "taught_groups": {k: {g: score.accuracy for g, score in v.groups().items()} for k, v in self.taught.items()},
                "taught_stale_rate": {k: v.stale.stale_rate if v.stale else None for k, v in self.taught.items()},
                "general_accuracy": {k: v.accuracy for k, v in self.general.items()},
                "forgetting": self.forgetting,
                "lost_vs_deployed": self.lost_vs_deployed,
                "gained_vs_deployed": (
                    gained_items(self.deployed_taught, self.candidate_taught) if self.deployed_taught else []
                ),
                "lost_vs_base_general": self.lost_vs_base_general,
                "general_paired": self.general_paired.to_dict() if self.general_paired else None,
                "drift": self.drift.summary() if self.drift else None,
            },
            "taught": {k: v.to_dict() for k, v in self.taught.items()},
            "general": {k: v.to_dict() for k, v in self.general.items()},
            "drift": self.drift.to_dict() if self.drift else None,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any], out_dir: Path | None = None) -> Comparison:
        return cls(
            candidate=d["candidate"],
            deployed=d["deployed"],
            taught={k: EvalResult.from_dict(v) for k, v in d["taught"].items()},
            general={k: EvalResult.from_dict(v) for k, v in d["general"].items()},
            out_dir=out_dir,
            drift=Drift.from_dict(d["drift"]) if d.get("drift") else None,
            precision=d["summary"].get("precision", "float32"),
        )


def load_report(out_dir: str | Path) -> Comparison:
    """Read back a comparison written by `compare_adapters`."""
    out_dir = Path(out_dir)
    return Comparison.from_dict(json.loads((out_dir / REPORT_JSON).read_text(encoding="utf-8")), out_dir=out_dir)


def compare_adapters(
    adapters: AdapterSet,
    candidate_id: str,
    *,
    taught: Sequence[QAItem],
    general: Sequence[QAItem] = (),
    deployed_id: str | None = None,
    out_dir: str | Path | None = None,
    max_new_tokens: int = 48,
    system_prompt: str | None = None,
    batch_size: int = 16,
    base_cache_dir: str | Path | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """Evaluate base, `candidate_id` and `deployed_id` (loaded in `adapters`) on the same prompts.

    The taught set is answered one question at a time (its latency and TTFT are the chat's); the
    general set in batches of `batch_size` (accuracy only), and the base's general answers are
    then scored under the candidate for the drift figure. The base model's results depend only
    on the base, the items and the settings, so with `base_cache_dir` they are computed once and
    reused by later cycles. With `out_dir`, writes report.json, report.md, accuracy.png and
    drift.png there atomically (an older report in that folder is replaced as a whole).
    """
    for adapter_id in (candidate_id, deployed_id):
        if adapter_id is not None and adapter_id not in adapters.loaded:
            raise ValueError(f"Adapter {adapter_id} is not loaded in the AdapterSet; call ensure_loaded first.")
    if deployed_id == candidate_id:
        deployed_id = None  # re-evaluating the deployed adapter: nothing to compare it against
    say = progress or (lambda message: None)
    cache = Path(base_cache_dir) if base_cache_dir is not None else None
    previous = adapters.active
    drift = None
    try:
        key = _base_cache_key(adapters, "taught", taught, max_new_tokens, system_prompt, None)
        cached = _read_cache(cache, key)
        if cached is not None:
            base_taught = EvalResult.from_dict(cached["result"])
        else:
            say(f"base model: {len(taught)} taught questions")
            base_taught = evaluate_model(adapters, taught, None, max_new_tokens, system_prompt)
            _write_cache(cache, key, {"result": base_taught.to_dict()})
        taught_results = {BASE_LABEL: base_taught}
        for adapter_id in [candidate_id] + ([deployed_id] if deployed_id else []):
            say(f"{adapter_id}: {len(taught)} taught questions")
            taught_results[adapter_id] = evaluate_model(adapters, taught, adapter_id, max_new_tokens, system_prompt)
        general_results: dict[str, EvalResult] = {}
        if general:
            # Forgetting is about the candidate vs the base; the deployed one is not needed here.
            key = _base_cache_key(adapters, "general", general, max_new_tokens, system_prompt, batch_size)
            cached = _read_cache(cache, key)
            if cached is not None:
                base_general = EvalResult.from_dict(cached["result"])
                base_scores = [tuple(x) for x in cached["scores"]]
            else:
                base_general = evaluate_model(adapters, general, None, max_new_tokens, system_prompt,
                                              batch_size=batch_size, progress=say)
                base_scores = None
            general_results = {
                BASE_LABEL: base_general,
                candidate_id: evaluate_model(adapters, general, candidate_id, max_new_tokens, system_prompt,
                                             batch_size=batch_size, progress=say, base_answers=base_general),
            }
            say(f"drift: scoring {len(general)} base answers under {candidate_id}")
            drift, scores = measure_drift(adapters, candidate_id, base_general, batch_size=batch_size,
                                          base_scores=base_scores)  # type: ignore[arg-type]
            if cached is None:
                _write_cache(cache, key, {"result": base_general.to_dict(), "scores": scores})
    finally:
        adapters.activate(previous)
    report = Comparison(candidate=candidate_id, deployed=deployed_id, taught=taught_results,
                        general=general_results, drift=drift,
                        precision=precision_of(adapters.base.model))
    if out_dir is not None:
        report = write_report(report, Path(out_dir))
    return report


def compare_for_snapshot(
    settings: Settings,
    adapters: AdapterSet,
    candidate_id: str,
    candidate_path: str | Path,
    *,
    deployed_id: str | None = None,
    deployed_path: str | Path | None = None,
    system_prompt: str | None = None,
    progress: Progress | None = None,
) -> Comparison:
    """`compare_adapters` wired to Settings: QA sets from `taught_qa_path` / `qa_general.jsonl`
    (the general one is optional), output in `eval_dir / candidate_id`."""
    adapters.ensure_loaded(candidate_id, candidate_path)
    if deployed_id is not None and deployed_id != candidate_id:
        if deployed_path is None:
            raise ValueError("deployed_path is required with deployed_id.")
        adapters.ensure_loaded(deployed_id, deployed_path)
    general_path = settings.shipped("qa_general.jsonl")
    general = load_qa(general_path) if general_path.exists() else []
    return compare_adapters(
        adapters,
        candidate_id,
        taught=load_qa(settings.taught_qa_path),
        general=general,
        deployed_id=deployed_id,
        out_dir=settings.eval_dir / candidate_id,
        max_new_tokens=settings.eval_max_new_tokens,
        system_prompt=system_prompt,
        batch_size=settings.eval_batch_size,
        base_cache_dir=settings.eval_dir / ".base_cache",
        progress=progress,
    )


# --------------------------------------------------------------------------- report files


def write_report(report: Comparison, out_dir: Path) -> Comparison:
    """Write report.json / report.md / accuracy.png into `out_dir` via a temp sibling + rename."""
    out_dir = Path(out_dir)
    with atomic_directory(out_dir, replace=True) as tmp:
        (tmp / REPORT_JSON).write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(format_report(report) + "\n", encoding="utf-8")
        plot_comparison(report, tmp / REPORT_PNG)
        if report.drift is not None:
            plot_drift(report.drift, tmp / DRIFT_PNG, report.candidate)
    log.info("Evaluation report for %s written to %s", report.candidate, out_dir)
    return dataclasses.replace(report, out_dir=out_dir)


def plot_comparison(report: Comparison, path: Path) -> Path:
    """Grouped bars: accuracy per model on the taught and the general set."""
    # A bare Figure on the Agg canvas: no pyplot global state, safe in Dagster's threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    sets = [("taught", report.taught)] + ([("general", report.general)] if report.general else [])
    labels = list(report.taught)
    width = 0.8 / len(labels)
    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for j, label in enumerate(labels):
        xs = [i + (j - (len(labels) - 1) / 2) * width for i in range(len(sets))]
        values = [results[label].accuracy if label in results else 0.0 for _, results in sets]
        role = "candidate " if label == report.candidate else "deployed " if label == report.deployed else ""
        bars = ax.bar(xs, values, width, label=role + label)
        ax.bar_label(bars, labels=[f"{v:.0%}" if label in r else "" for v, (_, r) in zip(values, sets)], fontsize=8)
    ax.set_xticks(range(len(sets)), [f"{name} (n={next(iter(r.values())).n})" for name, r in sets])
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy (all keywords)")
    ax.set_title(f"Candidate {report.candidate}")
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_drift(drift: Drift, path: Path, candidate: str) -> Path:
    """Histogram of the extra NLL per token of each base answer under the candidate."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.hist([i.extra_nll_per_token for i in drift.items], bins=30, color="tab:purple", alpha=0.8)
    ax.axvline(0, color="black", linewidth=1)
    ax.axvline(drift.extra_nll_per_token, color="tab:red", linestyle="--", label=f"mean {drift.extra_nll_per_token:+.3f}")
    ax.set_xlabel("extra NLL per token of the base's answer under the candidate (nats)")
    ax.set_ylabel("prompts")
    ax.set_title(f"Drift of {candidate}: {drift.prefix_kept:.0%} of {drift.n} answers start the same "
                 f"({drift.prefix_tokens} tokens)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def _result_line(r: EvalResult) -> str:
    return (
        f"| {r.label} | {r.accuracy:.1%} ({sum(i.correct for i in r.items)}/{r.n}) | {r.partial_accuracy:.1%} "
        f"| {r.latency_p50_ms:.0f} | {r.latency_p95_ms:.0f} | {r.ttft_p50_ms:.0f} | {r.tokens_per_s:.1f} |"
    )


_TABLE_HEAD = (
    "| model | accuracy | partial | latency p50 ms | p95 ms | TTFT p50 ms | tokens/s |\n"
    "|---|---|---|---|---|---|---|"
)


def format_report(result: EvalResult | Comparison) -> str:
    """Markdown for people (the CLI prints it; report.md holds it)."""
    if isinstance(result, EvalResult):
        lines = [f"# Evaluation of {result.label}", "", _TABLE_HEAD, _result_line(result), "", "## Items", ""]
        lines += [
            f"- {'✅' if i.correct else '❌'} `{i.id}` {i.prompt} → {_one_line(i.answer)}"
            + ("" if i.correct else f" (missing: {', '.join(k for k in i.keywords if k not in i.matched)})")
            for i in result.items
        ]
        return "\n".join(lines)

    r = result
    lines = [f"# Evaluation of candidate {r.candidate}", ""]
    lines.append(f"Deployed adapter: {r.deployed or 'none (base model serves)'}")
    lines.append(f"Precision (the chat's): {r.precision}")
    lines += ["", f"## Taught set (n={r.candidate_taught.n})", "", _TABLE_HEAD]
    lines += [_result_line(v) for v in r.taught.values()]
    groups = list(r.candidate_taught.groups())
    if groups:
        lines += ["", "| model | " + " | ".join(groups) + " | old answers to changed facts |",
                  "|---|" + "---|" * (len(groups) + 1)]
        for v in r.taught.values():
            scores, stale = v.groups(), v.stale
            cells = [f"{scores[g].accuracy:.0%} ({scores[g].correct}/{scores[g].n})" for g in groups]
            cells.append(f"{stale.stale_rate:.0%} ({stale.stale}/{stale.with_stale})" if stale else "—")
            lines.append(f"| {v.label} | " + " | ".join(cells) + " |")
    if r.general:
        lines += ["", f"## General set (n={r.general[r.candidate].n})", "", _TABLE_HEAD]
        lines += [_result_line(v) for v in r.general.values()]
        lines += ["", f"Forgetting (base − candidate on the general set): {r.forgetting:+.1%}"]
        pair = r.general_paired
        if pair is not None:
            lines.append(f"Paired: lost {len(pair.lost)}, gained {len(pair.gained)} of {pair.n} "
                         f"(one-sided McNemar p = {pair.p_worse:.3f})")
        if r.drift is not None:
            lines.append(f"Drift on {r.drift.n} base answers: {r.drift.extra_nll_per_token:+.3f} nats/token, "
                         f"{r.drift.prefix_kept:.0%} start with the same {r.drift.prefix_tokens} tokens")
        if r.lost_vs_base_general:
            lines.append(f"General items the base answered and the candidate lost: {', '.join(r.lost_vs_base_general)}")
    if r.deployed_taught is not None:
        lost = r.lost_vs_deployed
        lines += ["", f"Taught items the deployed adapter answered and the candidate lost: {', '.join(lost) or 'none'}"]
    lines += ["", "## Taught items", "", "| item | " + " | ".join(r.taught) + " |", "|---|" + "---|" * len(r.taught)]
    for index, item in enumerate(r.candidate_taught.items):
        cells = [("✅ " if res.items[index].correct else "❌ ") + _one_line(res.items[index].answer, 60) for res in r.taught.values()]
        lines.append(f"| `{item.id}` {_one_line(item.prompt, 60)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _one_line(text: str, limit: int = 120) -> str:
    flat = " ".join(text.split()).replace("|", "\\|")
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"
