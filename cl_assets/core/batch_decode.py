"""Batched greedy answers and teacher-forced scoring, for evaluation and the base's replay set.

Evaluation asks the same model hundreds of short questions. One `generate` per question keeps
a 135M model on a CPU busy with Python and kernel-launch overhead rather than arithmetic; a
left-padded batch answers 16 questions in little more than the time of one. Greedy decoding
with left padding gives the answers of the one-by-one path (tests/core/test_batch_decode.py
checks it on the real tokenizer), so the figures do not depend on the batch size.

`score_answers` runs the other direction: given prompts and fixed answers (the base model's
own), one forward pass gives each answer's negative log-likelihood under the model and whether
the model's greedy choice agrees with the answer's first tokens. That is the drift figure: it
needs no keywords and no generation by the candidate.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cl_assets.core.model import Message, _encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchAnswer:
    text: str
    completion_tokens: int
    finish_reason: str  # "stop" (EOS) or "length"
    latency_ms: float  # the batch's wall time (every answer of a batch waits for its longest)
    tokens_per_s: float  # this answer's tokens over the batch's wall time


@dataclass(frozen=True)
class AnswerScore:
    nll: float  # summed negative log-likelihood of the answer tokens, in nats
    tokens: int
    prefix_kept: bool  # the model's greedy choice equals the answer on its first `prefix` tokens


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


def greedy_answers(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    *,
    max_new_tokens: int,
    batch_size: int = 16,
    progress: Callable[[int, int], None] | None = None,
    sample: dict[str, Any] | None = None,
) -> list[BatchAnswer]:
    """Answer each conversation (greedy unless `sample` gives sampling kwargs), in input order.

    Prompts are sorted by length so a batch pads little; `progress(done, total)` is called
    after each batch.
    """
    import torch

    if max_new_tokens <= 0:
        raise ValueError("max_new_tokens must be positive.")
    encoded = [_encode(tokenizer, messages) for messages in conversations]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = tokenizer.eos_token_id
    eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
    results: list[BatchAnswer | None] = [None] * len(encoded)
    done = 0
    decoding = dict(do_sample=False, temperature=None, top_p=None, top_k=None) if sample is None else sample
    for batch in _batches(order, batch_size):
        width = max(len(encoded[i]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = encoded[index]
            ids[row, width - len(tokens) :] = torch.tensor(tokens)
            mask[row, width - len(tokens) :] = 1
        started = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids.to(device),
                attention_mask=mask.to(device),
                max_new_tokens=max_new_tokens,
                pad_token_id=pad,
                eos_token_id=eos,
                **decoding,
            )
        elapsed = time.perf_counter() - started
        for row, index in enumerate(batch):
            new = out[row, width:].tolist()
            length = next((k + 1 for k, token in enumerate(new) if token in eos_ids), None)
            finish = "stop" if length is not None else "length"
            kept = new[: length if length is not None else len(new)]
            text = tokenizer.decode(kept, skip_special_tokens=True)
            results[index] = BatchAnswer(
                text=text,
                completion_tokens=len(kept),
                finish_reason=finish,
                latency_ms=elapsed * 1000,
                tokens_per_s=len(kept) / elapsed if elapsed > 0 else 0.0,
            )
        done += len(batch)
        if progress is not None:
            progress(done, len(encoded))
    return [r for r in results if r is not None]


def answer_ids(tokenizer: Any, text: str) -> list[int]:
    """The tokens of an assistant answer as the chat template closes it (text + end of turn)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return list(ids) + ([eos] if isinstance(eos, int) else [])


def score_answers(
    model: Any,
    tokenizer: Any,
    conversations: Sequence[Sequence[Message]],
    answers: Sequence[str],
    *,
    prefix: int = 8,
    batch_size: int = 16,
) -> list[AnswerScore]:
    """Teacher-force each answer after its conversation; NLL and greedy agreement per answer."""
    import torch

    if len(conversations) != len(answers):
        raise ValueError("score_answers needs one answer per conversation.")
    rows = []
    for messages, answer in zip(conversations, answers, strict=True):
        prompt = _encode(tokenizer, messages)
        rows.append((prompt, answer_ids(tokenizer, answer)))
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    scores: list[AnswerScore | None] = [None] * len(rows)
    for batch in _batches(order, batch_size):
        width = max(len(rows[i][0]) + len(rows[i][1]) for i in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for row, index in enumerate(batch):
            tokens = rows[index][0] + rows[index][1]
            ids[row, : len(tokens)] = torch.tensor(tokens)  # right padding: positions stay 0..n
            mask[row, : len(tokens)] = 1
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        logprobs = torch.log_softmax(logits, dim=-1)
        for row, index in enumerate(batch):
            prompt, answer = rows[index]
            start = len(prompt) - 1  # the logits at position t predict token t+1
            positions = torch.arange(start, start + len(answer), device=logprobs.device)
            target = torch.tensor(answer, device=logprobs.device)
            picked = logprobs[row, positions, target]
            greedy = logprobs[row, positions].argmax(dim=-1)
            head = min(prefix, len(answer))
            scores[index] = AnswerScore(
                nll=float(-picked.sum()),
                tokens=len(answer),
                prefix_kept=bool((greedy[:head] == target[:head]).all()),
            )
    return [s for s in scores if s is not None]
