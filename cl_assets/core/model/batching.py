"""Continuous batching: one scheduler thread owns generation, concurrent answers share forward passes.

Each answer is a `Request` (prompt ids, sampling, token budget, cancel flag, adapter id) queued
to a `BatchScheduler`. Its thread serves the requests of one adapter at a time (a *turn*,
entered through a `turn(adapter_id)` context manager, the `AdapterSet` lock in the chat):

- a request joins the running batch at a step boundary: it is prefilled alone (so its first
  token is what a one-at-a-time answer computes), and its KV cache is left-padded to the
  batch's length (or the batch's to its) and stacked onto it; the attention mask hides the
  padding and explicit position ids keep every row's positions its own, so greedy answers
  equal the one-at-a-time answers token for token (tests/core/test_batching.py);
- every step feeds each row's last token in one forward pass; a row leaves when it meets EOS,
  its budget or its cancel flag, and padding columns no row needs any more are cut off;
- while requests for another adapter wait (or another thread wants the lock, e.g. a
  hot-swap), no new rows are admitted: the batch drains, the turn ends, the next one starts
  with the oldest waiting request's adapter.

Why not transformers' own `generation/continuous_batching` (it runs on CPU with PEFT's LoRA
layers, streams, and measured within noise of this loop at 8 concurrent answers): it has no
per-request seed (sampling draws from one global generator), and its manager runs the model
in a thread of its own, so serving adapters in turns would mean pausing and draining that
thread around every switch from outside. Here each request samples from its own seeded
`torch.Generator`, and the turn holds the adapter lock for exactly the steps it runs.

Tokens reach the consumer through a `queue.SimpleQueue` (no timeout polling, no streamer
thread); the consumer decodes them incrementally with `TextStreamer`'s rule (flush at a
newline, a CJK character or the last space), so the deltas read as the old streamer's did.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ContextManager

from cl_assets.core.model.base import Message
from cl_assets.core.model.generation import (
    GenerationResult,
    GenerationStream,
    _as_set,
    _encode,
)
from cl_assets.core.model.threads import release_openmp_threads

log = logging.getLogger(__name__)

_END = object()  # the scheduler's last item on a request's queue


@dataclass(eq=False)
class Request:
    """One answer to generate. The scheduler fills the timing fields and `finish_reason`."""

    prompt_ids: list[int]
    adapter_id: str | None
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    out: queue.SimpleQueue = field(default_factory=queue.SimpleQueue)  # token ids, then _END or an exception
    submitted_at: float = 0.0
    first_token_at: float | None = None
    finished_at: float | None = None
    completion_tokens: int = 0
    finish_reason: str | None = None


@dataclass(frozen=True)
class Finished:
    """How a request ended: tokens generated of its budget, and why it stopped."""

    adapter_id: str | None
    finish_reason: str | None
    completion_tokens: int
    max_new_tokens: int


@dataclass(eq=False)
class _Row:
    request: Request
    position: int  # position id of the row's next input token
    last: int  # last sampled token, not yet in the cache
    generator: Any = None  # torch.Generator for sampled rows


class BatchScheduler:
    """Owns generation: a daemon thread runs continuous batches of queued `Request`s.

    `turn(adapter_id)`: a context manager that makes `adapter_id` (None: the base) serve and
    yields the model to call, held for one turn. `contended()`: True while another thread
    waits for what `turn` holds; the turn then admits no new rows and ends when its batch
    drains.
    """

    def __init__(
        self,
        tokenizer: Any,
        turn: Callable[[str | None], ContextManager[Any]],
        *,
        max_batch: int = 8,
        contended: Callable[[], bool] = lambda: False,
        eos_ids: set[int] | None = None,
    ) -> None:
        if max_batch <= 0:
            raise ValueError("max_batch must be positive.")
        self.tokenizer = tokenizer
        self.max_batch = max_batch
        self._turn = turn
        self._contended = contended
        self._eos = eos_ids if eos_ids is not None else _as_set(tokenizer.eos_token_id)
        self._pending: list[Request] = []
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.steps = 0  # decode steps run (for tests and the bench)
        self.max_rows_seen = 0  # the widest batch so far
        # The latest finished requests: what a cancel really saved shows here (tests, the bench).
        self.finished: collections.deque[Finished] = collections.deque(maxlen=256)

    def submit(self, request: Request) -> Request:
        request.submitted_at = request.submitted_at or time.perf_counter()
        with self._cond:
            self._pending.append(request)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="cl-batch-scheduler", daemon=True)
                self._thread.start()
            self._cond.notify()
        return request

    # -- the scheduler thread ------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                if not self._pending:
                    # Idle: hand the OpenMP workers back, so they do not slow other threads'
                    # torch work meanwhile (see `threads`); the next turn makes them again.
                    release_openmp_threads()
                while not self._pending:
                    self._cond.wait()
                adapter_id = self._pending[0].adapter_id
            try:
                with self._turn(adapter_id) as model:
                    self._run_turn(model, adapter_id)
            except BaseException as exc:  # noqa: BLE001 - a failed turn (e.g. the swap failed) fails its requests
                log.exception("Batch turn for adapter %s failed", adapter_id)
                with self._cond:
                    failed = [r for r in self._pending if r.adapter_id == adapter_id]
                    self._pending = [r for r in self._pending if r.adapter_id != adapter_id]
                for request in failed:
                    request.out.put(exc)

    def _admit(self, adapter_id: str | None, room: int) -> list[Request]:
        with self._cond:
            taken = [r for r in self._pending if r.adapter_id == adapter_id][:room]
            for request in taken:
                self._pending.remove(request)
        return taken

    def _others_waiting(self, adapter_id: str | None) -> bool:
        with self._cond:
            return any(r.adapter_id != adapter_id for r in self._pending)

    def _run_turn(self, model: Any, adapter_id: str | None) -> None:
        import torch

        rows: list[_Row] = []
        cache: Any = None
        mask: Any = None
        admitting = True
        with torch.inference_mode():
            while True:
                kept = [i for i, row in enumerate(rows) if not self._finished_early(row)]
                if len(kept) < len(rows):
                    rows, cache, mask = self._select(rows, cache, mask, kept)
                if admitting:
                    for request in self._admit(adapter_id, self.max_batch - len(rows)):
                        if request.cancel.is_set():  # its client left while it waited: no prefill
                            self._finish(request, "cancelled")
                            continue
                        try:
                            row, row_cache = self._prefill(model, request)
                        except BaseException as exc:  # noqa: BLE001 - this request fails, the batch goes on
                            request.out.put(exc)
                            continue
                        if self._emit(row, row.last):
                            continue  # done after one token
                        rows, cache, mask = self._join(rows, cache, mask, row, row_cache)
                if not rows:
                    return
                self.max_rows_seen = max(self.max_rows_seen, len(rows))
                try:
                    rows, cache, mask = self._step(model, rows, cache, mask)
                except BaseException as exc:  # noqa: BLE001 - every row of the failed step gets the error
                    for row in rows:
                        row.request.out.put(exc)
                    return
                admitting = admitting and not self._others_waiting(adapter_id) and not self._contended()

    def _finished_early(self, row: _Row) -> bool:
        if not row.request.cancel.is_set():
            return False
        self._finish(row.request, "cancelled")
        return True

    def _prefill(self, model: Any, request: Request) -> tuple[_Row, Any]:
        import torch

        ids = torch.tensor([request.prompt_ids])
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True, logits_to_keep=1)
        generator = None
        if request.temperature > 0:
            generator = torch.Generator()
            if request.seed is not None:
                generator.manual_seed(request.seed)
            else:
                generator.seed()
        row = _Row(request, position=len(request.prompt_ids), last=0, generator=generator)
        row.last = self._choose(out.logits[:, -1, :].float(), [row])[0]
        return row, out.cache

    def _step(self, model: Any, rows: list[_Row], cache: Any, mask: Any) -> tuple[list[_Row], Any, Any]:
        import torch

        ids = torch.tensor([[row.last] for row in rows])
        positions = torch.tensor([[row.position] for row in rows])
        mask = torch.cat([mask, mask.new_ones((len(rows), 1))], dim=1)
        # A lone row has no padding: no mask spares the model building one every step.
        padded = len(rows) > 1 and not bool(mask.all())
        out = model(
            input_ids=ids,
            attention_mask=mask if padded else None,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        self.steps += 1
        chosen = self._choose(out.logits[:, -1, :].float(), rows)
        kept = []
        for i, (row, token) in enumerate(zip(rows, chosen, strict=True)):
            row.position += 1
            row.last = token
            if not self._emit(row, token):
                kept.append(i)
        if len(kept) < len(rows):
            return self._select(rows, out.cache, mask, kept)
        return rows, out.cache, mask

    def _choose(self, logits: Any, rows: list[_Row]) -> list[int]:
        import torch

        chosen = logits.argmax(dim=-1).tolist()
        for i, row in enumerate(rows):
            request = row.request
            if request.temperature <= 0:
                continue
            scores = logits[i] / request.temperature
            if request.top_p < 1.0:  # nucleus as transformers' TopPLogitsWarper cuts it
                ordered, order = torch.sort(scores, descending=False)
                cumulative = ordered.softmax(dim=-1).cumsum(dim=-1)
                remove = cumulative <= 1 - request.top_p
                remove[-1] = False
                scores = scores.scatter(0, order, ordered.masked_fill(remove, float("-inf")))
            chosen[i] = int(torch.multinomial(scores.softmax(dim=-1), 1, generator=row.generator))
        return chosen

    def _emit(self, row: _Row, token: int) -> bool:
        """Hand `token` to the consumer; True when the request is finished by it."""
        request = row.request
        if request.first_token_at is None:
            request.first_token_at = time.perf_counter()
        request.completion_tokens += 1
        request.out.put(token)
        if token in self._eos:
            self._finish(request, "stop")
        elif request.completion_tokens >= request.max_new_tokens:
            self._finish(request, "length")
        elif request.cancel.is_set():
            self._finish(request, "cancelled")
        else:
            return False
        return True

    def _finish(self, request: Request, reason: str) -> None:
        request.finish_reason = "cancelled" if request.cancel.is_set() else reason
        request.finished_at = time.perf_counter()
        self.finished.append(Finished(request.adapter_id, request.finish_reason, request.completion_tokens, request.max_new_tokens))
        request.out.put(_END)

    # -- the batch's KV cache ------------------------------------------------------------------

    @staticmethod
    def _select(rows: list[_Row], cache: Any, mask: Any, kept: list[int]) -> tuple[list[_Row], Any, Any]:
        """Keep rows `kept`; cut the left padding columns no kept row attends to any more."""
        import torch

        if not kept:
            return [], None, None
        index = torch.tensor(kept)
        mask = mask.index_select(0, index)
        start = int(mask.any(dim=0).int().argmax())
        mask = mask[:, start:]
        for layer in cache.layers:
            layer.keys = layer.keys.index_select(0, index)[:, :, start:]
            layer.values = layer.values.index_select(0, index)[:, :, start:]
        return [rows[i] for i in kept], cache, mask

    @staticmethod
    def _join(rows: list[_Row], cache: Any, mask: Any, row: _Row, row_cache: Any) -> tuple[list[_Row], Any, Any]:
        """Stack a prefilled row onto the batch, left-padding the shorter side's cache."""
        import torch
        from torch.nn.functional import pad

        row_mask = torch.ones((1, len(row.request.prompt_ids)), dtype=torch.long)
        if not rows:
            return [row], row_cache, row_mask
        width = max(mask.shape[1], row_mask.shape[1])

        def left(t: Any) -> Any:
            missing = width - t.shape[-2]
            return pad(t, (0, 0, missing, 0)) if missing else t

        for layer, new in zip(cache.layers, row_cache.layers, strict=True):
            layer.keys = torch.cat([left(layer.keys), left(new.keys)], dim=0)
            layer.values = torch.cat([left(layer.values), left(new.values)], dim=0)
        mask = torch.cat(
            [pad(mask, (width - mask.shape[1], 0)), pad(row_mask, (width - row_mask.shape[1], 0))], dim=0
        )
        return [*rows, row], cache, mask


class _Detokenizer:
    """`TextStreamer`'s incremental decoding, fed token ids and returning the printable delta."""

    def __init__(self, tokenizer: Any) -> None:
        from transformers import TextStreamer

        self._tokenizer = tokenizer
        self._is_cjk = lambda cp: TextStreamer._is_chinese_char(None, cp)  # type: ignore[arg-type]
        self._cache: list[int] = []
        self._printed = 0

    def put(self, tokens: list[int]) -> str:
        self._cache.extend(tokens)
        text = self._tokenizer.decode(self._cache, skip_special_tokens=True)
        if text.endswith("\n"):
            delta = text[self._printed :]
            self._cache, self._printed = [], 0
        elif text and self._is_cjk(ord(text[-1])):
            delta = text[self._printed :]
            self._printed += len(delta)
        else:
            delta = text[self._printed : text.rfind(" ") + 1]
            self._printed += len(delta)
        return delta

    def end(self) -> str:
        text = self._tokenizer.decode(self._cache, skip_special_tokens=True) if self._cache else ""
        delta = text[self._printed :]
        self._cache, self._printed = [], 0
        return delta


class BatchedStream(GenerationStream):
    """A `GenerationStream` answered by a `BatchScheduler`: same construction (the prompt is
    fitted to the context, `PromptTooLongError` raised), one iteration for text deltas,
    `.result`, `.cancel()` (stops only this answer), `.messages`. The request is queued when
    iteration starts."""

    def __init__(self, scheduler: BatchScheduler, adapter_id: str | None, model: Any, tokenizer: Any,
                 messages: Sequence[Message], **kwargs: Any) -> None:  # fmt: skip
        super().__init__(model, tokenizer, messages, **kwargs)
        self._scheduler = scheduler
        self._adapter_id = adapter_id

    def _run(self) -> Iterator[str]:
        requested = time.perf_counter()
        prompt_ids = _encode(self._tokenizer, self.messages)
        request = Request(
            prompt_ids=prompt_ids,
            adapter_id=self._adapter_id,
            max_new_tokens=self._max_new_tokens,
            temperature=self._temperature,
            top_p=self._top_p,
            seed=self._seed,
            cancel=self._cancel,
            submitted_at=requested,
        )
        self._scheduler.submit(request)
        detok = _Detokenizer(self._tokenizer)
        pieces: list[str] = []
        drained = False
        try:
            while not drained:
                items = [request.out.get()]
                with contextlib.suppress(queue.Empty):
                    while True:  # take what else is there: one decode for several tokens
                        items.append(request.out.get_nowait())
                tokens = []
                for item in items:
                    if item is _END:
                        drained = True
                    elif isinstance(item, BaseException):
                        raise item
                    else:
                        tokens.append(item)
                delta = detok.put(tokens) if tokens else ""
                if drained:
                    delta += detok.end()
                if delta:
                    pieces.append(delta)
                    yield delta
        finally:
            if not drained:  # the consumer left early: the scheduler drops the row at its next step
                self._cancel.set()
        finished = request.finished_at or time.perf_counter()
        latency_s = finished - requested
        ttft_s = (request.first_token_at or finished) - requested
        self._result = GenerationResult(
            text="".join(pieces),
            latency_ms=latency_s * 1000,
            ttft_ms=ttft_s * 1000,
            prompt_tokens=len(prompt_ids),
            completion_tokens=request.completion_tokens,
            tokens_per_s=request.completion_tokens / latency_s if latency_s > 0 else 0.0,
            finish_reason=request.finish_reason or "cancelled",
            prompt_messages=len(self.messages),
        )


def model_turn(model: Any) -> Callable[[str | None], ContextManager[Any]]:
    """A `turn` for a plain model without adapters (tests, evaluation)."""
    return lambda adapter_id: contextlib.nullcontext(model)
