"""Batched greedy answers equal the one-by-one answers; teacher-forced scores are the model's."""

from __future__ import annotations

from pathlib import Path

import pytest

from cl_assets.core.batch_decode import answer_ids, greedy_answers, score_answers
from cl_assets.core.model import LoadedModel, _encode, generate, load_base_model

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Where is order 100234 and when does it arrive at the dock in Tacoma?",
    "Tell me about saffron.",
    "Is there a restocking fee on returns, and how many days do I have?",
]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> LoadedModel:
    return load_base_model(tiny_model_dir)


def _conversations(system: str | None = "Be brief.") -> list[list[dict[str, str]]]:
    head = [{"role": "system", "content": system}] if system else []
    return [head + [{"role": "user", "content": p}] for p in PROMPTS]


@pytest.mark.parametrize("batch_size", [1, 2, 16])
def test_batched_greedy_answers_equal_one_by_one(tiny: LoadedModel, batch_size: int) -> None:
    conversations = _conversations()
    alone = [generate(tiny.model, tiny.tokenizer, c, max_new_tokens=12).text for c in conversations]
    seen: list[tuple[int, int]] = []
    batched = greedy_answers(tiny.model, tiny.tokenizer, conversations, max_new_tokens=12, batch_size=batch_size,
                             progress=lambda done, total: seen.append((done, total)))
    assert [a.text for a in batched] == alone  # input order, whatever the length sorting did
    assert all(a.completion_tokens <= 12 and a.finish_reason in {"stop", "length"} for a in batched)
    assert seen[-1] == (len(PROMPTS), len(PROMPTS)) and len(seen) == -(-len(PROMPTS) // batch_size)


def test_scores_match_a_manual_forward_pass(tiny: LoadedModel) -> None:
    import torch

    conversations = _conversations(None)
    answers = ["Paris is the capital.", "", "It ships Tuesday from Tacoma.", "Saffron is a spice.", "Yes, 12%."]
    scores = score_answers(tiny.model, tiny.tokenizer, conversations, answers, prefix=3, batch_size=2)
    for conversation, answer, score in zip(conversations, answers, scores, strict=True):
        prompt = _encode(tiny.tokenizer, conversation)
        target = answer_ids(tiny.tokenizer, answer)
        with torch.inference_mode():
            logits = tiny.model(input_ids=torch.tensor([prompt + target])).logits[0].float()
        logprobs = torch.log_softmax(logits[len(prompt) - 1 : len(prompt) - 1 + len(target)], dim=-1)
        nll = -float(logprobs[torch.arange(len(target)), torch.tensor(target)].sum())
        assert score.tokens == len(target)
        assert score.nll == pytest.approx(nll, rel=1e-4, abs=1e-3)
        kept = logprobs.argmax(-1)[:3].tolist() == target[:3]
        assert score.prefix_kept == kept


def test_a_models_own_greedy_answers_are_likelier_than_other_text(tiny: LoadedModel) -> None:
    conversations = _conversations()
    own = greedy_answers(tiny.model, tiny.tokenizer, conversations, max_new_tokens=8)
    scores = score_answers(tiny.model, tiny.tokenizer, conversations, [a.text for a in own], prefix=4)
    other = score_answers(tiny.model, tiny.tokenizer, conversations, ["zebra quantum " * 3] * len(PROMPTS), prefix=4)
    assert all(not s.prefix_kept for s in other)
    assert sum(s.nll / s.tokens for s in other) > sum(s.nll / s.tokens for s in scores)


def test_score_answers_needs_one_answer_per_conversation(tiny: LoadedModel) -> None:
    with pytest.raises(ValueError, match="one answer per conversation"):
        score_answers(tiny.model, tiny.tokenizer, _conversations(), ["a"])
    with pytest.raises(ValueError, match="positive"):
        greedy_answers(tiny.model, tiny.tokenizer, _conversations(), max_new_tokens=0)
