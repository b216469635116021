"""Prompts that fit the context window, and streaming generation with its metrics."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, ContextManager

from cl_assets.core.model.base import ContextLengthError, Message, PromptTooLongError, _context_length
from cl_assets.core.model.threads import release_openmp_threads

if TYPE_CHECKING:
    pass

def _encode(tokenizer: Any, messages: Sequence[Message]) -> list[int]:
    # sanitize_control_tokens: text a user types (e.g. "<|im_start|>system") stays plain text,
    # so nobody can forge a turn of the ChatML template from inside a message.
    ids = tokenizer.apply_chat_template(
        [dict(m) for m in messages],
        add_generation_prompt=True,
        tokenize=True,
        return_dict=False,
        sanitize_control_tokens=True,
    )
    return list(ids)


def fit_messages(tokenizer: Any, messages: Sequence[Message], max_prompt_tokens: int) -> list[dict[str, str]]:
    """Drop the oldest non-system turns until the prompt fits `max_prompt_tokens`.

    System messages are never dropped, nor is the latest message. A conversation left starting
    with an assistant turn loses that turn too, so the history always opens with the user.
    Raises `PromptTooLongError` when even the system prompt plus the latest message do not fit.
    """
    kept = [dict(m) for m in messages]
    if not kept:
        raise ValueError("fit_messages needs at least one message.")

    def droppable() -> int | None:
        last = len(kept) - 1
        return next((i for i, m in enumerate(kept) if m.get("role") != "system" and i != last), None)

    while len(_encode(tokenizer, kept)) > max_prompt_tokens:
        index = droppable()
        if index is None:
            raise PromptTooLongError(
                f"The prompt needs {len(_encode(tokenizer, kept))} tokens even with the history dropped; "
                f"at most {max_prompt_tokens} fit. Shorten the message or the system prompt."
            )
        del kept[index]
        # Do not leave an answer without its question at the front of the history.
        while (index := droppable()) is not None and kept[index].get("role") == "assistant" and not any(
            m.get("role") == "user" for m in kept[:index]
        ):
            del kept[index]
    return kept


# --------------------------------------------------------------------------- generation


@dataclass(frozen=True)
class GenerationResult:
    """One answer and how it was produced.

    latency_ms: request to last token (prompt encoding included); ttft_ms: request to the first
    generated token; tokens_per_s: completion_tokens / latency (end-to-end decode throughput).
    """

    text: str
    latency_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float
    finish_reason: str = "stop"  # "stop" (EOS), "length" (max_new_tokens) or "cancelled"
    prompt_messages: int = 0  # messages actually sent after fit_messages

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class GenerationStream:
    """Iterate for text deltas; afterwards `.result` holds the `GenerationResult`.

    `model.generate` runs in a worker thread feeding a `TextIteratorStreamer`. Leaving the loop
    early (or calling `cancel()`) stops the worker at the next token. The stream may be resumed
    from different threads (as Gradio does): no lock is held by the consumer; a `guard` (a
    context-manager factory yielding the model to run) is entered inside the worker thread.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        messages: Sequence[Message],
        *,
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        max_prompt_tokens: int | None = None,
        seed: int | None = None,
        guard: Callable[[], ContextManager[Any]] | None = None,
        trim: bool = True,
    ) -> None:
        """`trim=False`: refuse (`ContextLengthError`) a prompt that does not fit instead of
        dropping its oldest turns."""
        if max_new_tokens <= 0:
            raise ValueError("max_new_tokens must be positive.")
        if temperature < 0:
            raise ValueError("temperature must be >= 0 (0 means greedy).")
        self._model = model
        self._tokenizer = tokenizer
        budget = max_prompt_tokens if max_prompt_tokens is not None else _context_length(model, tokenizer) - max_new_tokens
        if not trim:
            self.messages = [dict(m) for m in messages]
            needed = len(_encode(tokenizer, self.messages))
            if needed > budget:
                raise ContextLengthError(needed, max_new_tokens, budget + max_new_tokens)
        elif budget <= 0:
            raise PromptTooLongError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt.")
        else:
            self.messages = fit_messages(tokenizer, messages, budget)
        self._max_new_tokens = max_new_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._seed = seed
        self._guard = guard or (lambda: contextlib.nullcontext(model))
        self._cancel = threading.Event()
        self._started = False
        self._result: GenerationResult | None = None

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("The stream has not been consumed yet; iterate it (or call generate()).")
        return self._result

    def cancel(self) -> None:
        self._cancel.set()

    def __iter__(self) -> Iterator[str]:
        if self._started:
            raise RuntimeError("A GenerationStream can be iterated only once.")
        self._started = True
        return self._run()

    def _run(self) -> Iterator[str]:
        import torch
        from transformers import (
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        tokenizer, model = self._tokenizer, self._model
        requested = time.perf_counter()
        prompt_ids = _encode(tokenizer, self.messages)
        device = next(model.parameters()).device
        input_ids = torch.tensor([prompt_ids], device=device)
        first_token_at: list[float] = []
        cancel = self._cancel

        class _TimedStreamer(TextIteratorStreamer):
            def put(self, value: Any) -> None:
                if not self.next_tokens_are_prompt and not first_token_at:
                    first_token_at.append(time.perf_counter())
                super().put(value)

        class _Cancelled(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
                return torch.full((input_ids.shape[0],), cancel.is_set(), dtype=torch.bool, device=input_ids.device)

        streamer = _TimedStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        kwargs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "max_new_tokens": self._max_new_tokens,
            "streamer": streamer,
            "stopping_criteria": StoppingCriteriaList([_Cancelled()]),
            "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": tokenizer.eos_token_id,
        }
        if self._temperature == 0:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=self._temperature, top_p=self._top_p, top_k=None)
        seed = self._seed if self._temperature > 0 else None

        outcome: dict[str, Any] = {}

        def work() -> None:
            try:
                with self._guard() as guarded, torch.inference_mode():
                    if seed is not None:  # seeded under the guard, so no other answer draws in between
                        torch.manual_seed(seed)
                    outcome["sequences"] = guarded.generate(**kwargs)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread below
                outcome["error"] = exc
                streamer.end()  # unblock the consumer; the error is re-raised there
            finally:
                outcome["finished_at"] = time.perf_counter()

        # This thread only waits on the streamer from here: its OpenMP workers (left from
        # loading or earlier work) would halve the generating thread's speed (see `threads`).
        release_openmp_threads()
        worker = threading.Thread(target=work, name="cl-generate", daemon=True)
        worker.start()
        pieces: list[str] = []
        drained = False
        try:
            for delta in streamer:
                if delta:
                    pieces.append(delta)
                    yield delta
            drained = True
        finally:
            if not drained:  # the consumer left early: stop the worker at its next token
                cancel.set()
            worker.join()
        if "error" in outcome:
            raise outcome["error"]

        sequences = outcome["sequences"]
        new_ids = sequences[0, len(prompt_ids) :].tolist()
        eos_ids = _as_set(tokenizer.eos_token_id) | _as_set(getattr(model.generation_config, "eos_token_id", None))
        completion_tokens = len(new_ids)
        # Batch of one: any pad after EOS is not generated text.
        while completion_tokens > 1 and new_ids[completion_tokens - 1] == tokenizer.pad_token_id and (
            new_ids[completion_tokens - 2] in eos_ids
        ):
            completion_tokens -= 1
        if cancel.is_set():
            finish = "cancelled"
        elif completion_tokens and new_ids[completion_tokens - 1] in eos_ids:
            finish = "stop"
        else:
            finish = "length"
        latency_s = outcome["finished_at"] - requested
        ttft_s = (first_token_at[0] if first_token_at else outcome["finished_at"]) - requested
        self._result = GenerationResult(
            text="".join(pieces),
            latency_ms=latency_s * 1000,
            ttft_ms=ttft_s * 1000,
            prompt_tokens=len(prompt_ids),
            completion_tokens=completion_tokens,
            tokens_per_s=completion_tokens / latency_s if latency_s > 0 else 0.0,
            finish_reason=finish,
            prompt_messages=len(self.messages),
        )


class StopStrings:
    """Cut a streamed answer before the first of its stop strings (OpenAI's `stop`).

    `feed(delta)` returns the text that is safe to show and whether a stop string was met;
    text that could be the start of a stop string is held back until the next delta settles
    it, so a stop string split across deltas is still cut and never shown in part.
    `flush()` returns what is held when the answer ends without one.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self._held = ""
        self.hit = False

    def feed(self, delta: str) -> tuple[str, bool]:
        if self.hit:
            return "", True
        text = self._held + delta
        found = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if found:
            self.hit, self._held = True, ""
            return text[: min(found)], True
        keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), default=0)
        self._held = text[len(text) - keep :]
        return text[: len(text) - keep], False

    def flush(self) -> str:
        held, self._held = self._held, ""
        return held


def _as_set(value: Any) -> set[int]:
    if value is None:
        return set()
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value}


def stream_generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_prompt_tokens: int | None = None,
    seed: int | None = None,
    trim: bool = True,
) -> GenerationStream:
    """Start a streamed answer to ChatML `messages`; greedy when temperature == 0.

    The history is trimmed with `fit_messages` to `max_prompt_tokens` (default: the context
    length minus `max_new_tokens`), or with `trim=False` refused when it does not fit
    (`ContextLengthError`). Iterate the returned stream for text deltas, then read `.result`.
    Nothing runs until iteration starts.
    """
    return GenerationStream(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
        trim=trim,
    )


def generate(
    model: Any,
    tokenizer: Any,
    messages: Sequence[Message],
    *,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_p: float = 1.0,
    max_prompt_tokens: int | None = None,
    seed: int | None = None,
) -> GenerationResult:
    """`stream_generate` drained: the whole answer and its metrics."""
    stream = stream_generate(
        model,
        tokenizer,
        messages,
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        max_prompt_tokens=max_prompt_tokens,
        seed=seed,
    )
    for _ in stream:
        pass
    return stream.result
