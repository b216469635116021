"""Continuous batching answers as one-at-a-time generation does; merged adapters as unmerged ones.

All on the tiny random Llama (real SmolLM2 tokenizer). "One at a time" is the old path:
`GenerationStream` around transformers' `model.generate`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from cl_assets.core import model as M
from cl_assets.core.model.batching import BatchedStream, BatchScheduler, model_turn

PROMPTS = [
    "Hi",
    "What is the capital of France?",
    "Where is order 100234 and when does it arrive at the dock in Tacoma?",
    "Tell me about saffron.",
    "Is there a restocking fee on returns, and how many days do I have?",
    "Do you ship to Canada?",
]


def _conversation(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": "Be brief."}, {"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir: Path) -> M.LoadedModel:
    return M.load_base_model(tiny_model_dir)


def _eos(loaded: M.LoadedModel) -> set[int]:
    return {loaded.tokenizer.eos_token_id}


class _Gate:
    """A `turn` that lets the scheduler run only once `opened` is set: requests queue up
    first, so they start in one batch."""

    def __init__(self, model) -> None:
        self.model = model
        self.opened = threading.Event()

    def turn(self, adapter_id):
        import contextlib

        self.opened.wait(30)
        return contextlib.nullcontext(self.model)


def _run_concurrently(streams: list[M.GenerationStream], starts: list[float]) -> list[str]:
    texts: list[str | None] = [None] * len(streams)

    def consume(i: int) -> None:
        time.sleep(starts[i])
        texts[i] = "".join(streams[i])

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return [t or "" for t in texts]


def test_batched_greedy_equals_one_at_a_time(tiny: M.LoadedModel) -> None:
    """Prompts of different lengths, joining a running batch at different steps."""
    alone = [M.generate(tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=24) for p in PROMPTS]
    scheduler = BatchScheduler(tiny.tokenizer, model_turn(tiny.model), max_batch=4, eos_ids=_eos(tiny))
    first = BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation(PROMPTS[0]), max_new_tokens=24)
    # The others join while the first one is decoding: each after a few of its tokens.
    rest = [BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=24)
            for p in PROMPTS[1:]]  # fmt: skip
    texts: list[str] = []
    joined = []
    for k, delta in enumerate(first):
        texts.append(delta)
        if k < len(rest):
            joined.append(threading.Thread(target=lambda s=rest[k]: [None for _ in s]))
            joined[-1].start()
            time.sleep(0.02)
    for s in rest[len(joined):]:  # several tokens can arrive as one delta: start whoever is left
        joined.append(threading.Thread(target=lambda s=s: [None for _ in s]))
        joined[-1].start()
    for t in joined:
        t.join(60)
    batched = [first, *rest]
    assert "".join(texts) == first.result.text
    for reference, stream in zip(alone, batched, strict=True):
        assert stream.result.text == reference.text
        assert stream.result.completion_tokens == reference.completion_tokens
        assert stream.result.prompt_tokens == reference.prompt_tokens
        assert stream.result.finish_reason == reference.finish_reason
    assert scheduler.max_rows_seen >= 2  # they did share forward passes


@pytest.mark.parametrize("attention", ["sdpa", "eager"])  # sdpa: what the chat runs (CL_CHAT_ATTENTION)
def test_batched_answers_when_all_arrive_at_once(tiny_model_dir: Path, attention: str) -> None:
    tiny = M.load_base_model(tiny_model_dir)
    tiny.model.set_attn_implementation(attention)
    alone = [M.generate(tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=16).text for p in PROMPTS]
    gate = _Gate(tiny.model)
    scheduler = BatchScheduler(tiny.tokenizer, gate.turn, max_batch=8, eos_ids=_eos(tiny))
    streams = [BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=16)
               for p in PROMPTS]  # fmt: skip
    threading.Timer(0.3, gate.opened.set).start()
    assert _run_concurrently(streams, [0.0] * len(streams)) == alone
    assert scheduler.max_rows_seen == len(PROMPTS)
    assert scheduler.steps < 16 * len(PROMPTS) / 2  # one step serves many answers


def test_metrics_and_finish_reasons_in_batched_mode(tiny: M.LoadedModel) -> None:
    """`length` at the budget; `stop` on EOS, counted like the old path counts it."""
    scheduler = BatchScheduler(tiny.tokenizer, model_turn(tiny.model), eos_ids=_eos(tiny))
    eos = tiny.tokenizer.eos_token_id
    reference = {p: M.generate(tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=64) for p in PROMPTS}
    streams = {p: BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=64)
               for p in PROMPTS}  # fmt: skip
    _run_concurrently(list(streams.values()), [0.0] * len(streams))
    for p, stream in streams.items():
        got, want = stream.result, reference[p]
        assert (got.text, got.completion_tokens, got.prompt_tokens, got.finish_reason, got.prompt_messages) == (
            want.text, want.completion_tokens, want.prompt_tokens, want.finish_reason, want.prompt_messages)
        assert got.completion_tokens <= 64 and got.ttft_ms <= got.latency_ms and got.tokens_per_s > 0
    short = BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation("Hi"), max_new_tokens=3)
    for _ in short:
        pass
    assert (short.result.completion_tokens, short.result.finish_reason) == (3, "length")
    # The EOS rule itself: a request that samples EOS stops with `stop` and counts it.
    stop_scheduler = BatchScheduler(tiny.tokenizer, model_turn(tiny.model), eos_ids={eos, *_first_tokens(tiny)})
    stopped = BatchedStream(stop_scheduler, None, tiny.model, tiny.tokenizer, _conversation("Hi"), max_new_tokens=8)
    for _ in stopped:
        pass
    assert (stopped.result.completion_tokens, stopped.result.finish_reason) == (1, "stop")


def _first_tokens(tiny: M.LoadedModel) -> set[int]:
    """The token the tiny model answers "Hi" with first (to make it an end token)."""
    import torch

    ids = M._encode(tiny.tokenizer, _conversation("Hi"))
    with torch.inference_mode():
        return {int(tiny.model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())}


def test_a_cancelled_request_leaves_the_others_unchanged(tiny: M.LoadedModel) -> None:
    alone = [M.generate(tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=20).text for p in PROMPTS[:4]]
    gate = _Gate(tiny.model)
    scheduler = BatchScheduler(tiny.tokenizer, gate.turn, eos_ids=_eos(tiny))
    streams = [BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation(p), max_new_tokens=20)
               for p in PROMPTS[:4]]  # fmt: skip
    texts: list[str] = [""] * 4

    def consume(i: int) -> None:
        for k, delta in enumerate(streams[i]):
            texts[i] += delta
            if i == 1 and k == 1:
                streams[i].cancel()  # keeps iterating: the scheduler ends it

    threads = [threading.Thread(target=consume, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    gate.opened.set()
    for t in threads:
        t.join(60)
    assert streams[1].result.finish_reason == "cancelled"
    assert streams[1].result.completion_tokens < 20
    assert [texts[i] for i in (0, 2, 3)] == [alone[i] for i in (0, 2, 3)]
    assert all(streams[i].result.finish_reason != "cancelled" for i in (0, 2, 3))


def test_sampling_is_per_request_and_seeded(tiny: M.LoadedModel) -> None:
    scheduler = BatchScheduler(tiny.tokenizer, model_turn(tiny.model), eos_ids=_eos(tiny))

    def answer(seed: int, temperature: float = 1.0) -> str:
        stream = BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, _conversation("Hi"), max_new_tokens=12,
                               temperature=temperature, top_p=0.9, seed=seed)  # fmt: skip
        return "".join(stream)

    assert answer(7) == answer(7)
    assert len({answer(s) for s in range(4)}) > 1


# --------------------------------------------------------------------------- through AdapterSet


def test_concurrent_requests_for_different_adapters_get_their_own(tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]) -> None:
    (a1, p1), (a2, p2) = tiny_adapter_dirs.items()
    plain = M.AdapterSet(M.load_base_model(tiny_model_dir))
    plain.ensure_loaded(a1, p1)
    plain.ensure_loaded(a2, p2)
    jobs = [(adapter, prompt) for prompt in PROMPTS[:3] for adapter in (a1, a2, None)]
    alone = [plain.generate(_conversation(p), adapter, max_new_tokens=16).text for adapter, p in jobs]

    batched = M.AdapterSet(M.load_base_model(tiny_model_dir), batching=True, max_batch=4)
    batched.ensure_loaded(a1, p1)
    batched.ensure_loaded(a2, p2)
    streams = [batched.stream_generate(_conversation(p), adapter, max_new_tokens=16) for adapter, p in jobs]
    assert all(isinstance(s, BatchedStream) for s in streams)
    assert _run_concurrently(streams, [0.005 * i for i in range(len(jobs))]) == alone
    assert len({a for a, _ in jobs}) == 3 and len(set(alone)) > 3  # the adapters do answer differently


def test_a_request_joins_the_batch_running_in_the_adapter_set(tiny_model_dir: Path) -> None:
    """The scheduler holds the adapter lock for a whole turn; a request arriving meanwhile must
    still reach it and join the running batch, not wait for the batch to drain."""
    served = M.AdapterSet(M.load_base_model(tiny_model_dir), batching=True, max_batch=4)
    long = served.stream_generate(_conversation(PROMPTS[2]), None, max_new_tokens=300)
    tokens = iter(long)
    next(tokens)  # the turn is running: the scheduler holds the lock
    short: list[M.GenerationStream] = []

    def ask() -> None:
        stream = served.stream_generate(_conversation(PROMPTS[1]), None, max_new_tokens=4)
        "".join(stream)
        short.append(stream)

    asker = threading.Thread(target=ask)
    asker.start()
    flowing = 1
    for _ in tokens:  # keep the long answer flowing while the short one is asked
        flowing += 1
        if short:
            break
    asker.join(60)
    assert short and short[0].result.completion_tokens >= 1
    assert served.scheduler.max_rows_seen == 2  # they shared forward passes
    assert flowing < 300  # the short answer finished inside the long one's turn
    long.cancel()
    "".join(tokens)


def _weights(model) -> dict[str, object]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if "lora_" not in name}


def test_merged_answers_equal_unmerged_and_a_swap_restores_the_base(tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path], tmp_path: Path) -> None:
    import torch

    from tests.model_fixtures import make_random_adapter

    (a1, p1), (a2, p2) = tiny_adapter_dirs.items()
    a3, p3 = "20261122_000000", make_random_adapter(tiny_model_dir, tmp_path / "r2", seed=3, r=2)  # a second slot
    unmerged = M.AdapterSet(M.load_base_model(tiny_model_dir))
    merged_base = M.load_base_model(tiny_model_dir)
    pristine = {n: p.detach().clone() for n, p in merged_base.model.named_parameters()}
    merged = M.AdapterSet(merged_base, merge=True, batching=True)
    for adapters in (unmerged, merged):
        for adapter_id, path in ((a1, p1), (a2, p2), (a3, p3)):
            adapters.ensure_loaded(adapter_id, path)

    def base_weights() -> dict[str, torch.Tensor]:
        # The base linear weights as the model holds them, under their plain names.
        return {n.replace("base_model.model.", "").replace(".base_layer", ""): p
                for n, p in merged.base_model.named_parameters() if "lora_" not in n}  # fmt: skip

    for adapter_id in (a1, a2, None, a3, a1, None):
        for prompt in PROMPTS[:3]:
            want = unmerged.generate(_conversation(prompt), adapter_id, max_new_tokens=16).text
            assert merged.generate(_conversation(prompt), adapter_id, max_new_tokens=16).text == want, adapter_id
        current = base_weights()
        changed = [n for n, w in pristine.items() if not torch.equal(current[n], w)]
        if adapter_id is None:
            assert changed == []  # bit for bit the base, after any number of merges
        else:
            assert changed and all(n.endswith("proj.weight") for n in changed)
    merged.unload(a3)
    merged.unload(a2)
    merged.unload(a1)
    assert all(torch.equal(p, pristine[n]) for n, p in merged.base_model.named_parameters())
