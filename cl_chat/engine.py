"""The chat engine: one base model, the deployed adapter hot-swapped in place, every turn logged.

No Gradio here: the web app (`cl_chat.app`) and the terminal chat (`cl_chat.terminal`) are thin
shells around a `ChatEngine`.

- The base model is loaded once. Before each turn the engine asks the store which deployment
  is current (one indexed row); when it changed, the adapter's files are checked against the
  registry's hash, loaded into the same base model and activated. An adapter that fails the
  check is refused (logged) and the previous one keeps serving.
- A turn names its adapter when it starts; the switch to it happens inside the generation
  thread under the `AdapterSet` lock, so a swap requested meanwhile waits for the answer in
  flight instead of changing it half-way.
- Concurrent turns for the same adapter share forward passes (`CL_CHAT_BATCHING`, see
  `cl_assets.core.model.batching`), and the serving adapter is merged into the base weights
  (`CL_CHAT_MERGE_ADAPTER`), so one answer runs as fast as the base model.
- A finished turn goes through `Ingestor.ingest_interaction` (which sanitizes the text and
  hashes the user id) and adds one metrics-only line to `logs/generation_metrics.jsonl`.
- `complete()` answers a whole conversation a client sends (the `/v1` API, `cl_chat.api`):
  used as sent (refused, not trimmed, when it does not fit), `model` picks the adapter per
  request, and a resend of the same conversation by the same user is recorded as a retry.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cl_assets.core.ingest import IngestError, Ingestor
from cl_assets.core.model import (
    AdapterSet,
    AdapterWeights,
    GenerationResult,
    GenerationStream,
    LoadedModel,
    ModelError,
    StopStrings,
    load_base_model,
)
from cl_assets.core.model.precision import serving_precision
from cl_assets.core.model.threads import release_openmp_threads
from cl_assets.core.registry import BASE_LABEL, Registry, RegistryError
from cl_assets.core.snapshot import is_snapshot_id
from cl_assets.core.store import Store
from cl_assets.settings import Settings

log = logging.getLogger(__name__)

KNOWLEDGE_FACTS = 8  # facts put into the system prompt with CL_KNOWLEDGE_IN_PROMPT
#: Model names that mean "whatever the registry has deployed" (the page's adapter).
DEPLOYED_ALIASES = ("cl", "deployed")


class ChatError(ValueError):
    """A message the engine will not answer; the text is meant for the person chatting."""


class MessageTooLongError(ChatError):
    """The message is longer than `CL_MAX_MESSAGE_CHARS`."""


class UnknownModelError(ChatError):
    """A `model` name that is neither an alias, the base model nor a registered adapter."""


class ModelRefusedError(ChatError):
    """A registered adapter that may not answer: tainted, or its files fail the registry's check."""


@dataclass(frozen=True)
class ServedModel:
    """A name `complete(model=...)` accepts, and what answers for it."""

    id: str
    adapter_id: str | None  # None: the base model (for an alias: what it names now)
    created: datetime | None  # when the adapter was registered; None for aliases and the base


@dataclass
class Exchange:
    """One answered question of a session."""

    prompt: str
    answer: str
    interaction_id: str | None  # None when the turn could not be logged
    adapter_version: str
    helpful: bool | None = None  # the rating given in this session, if any


@dataclass
class ChatSession:
    """The history of one conversation (a browser tab, a terminal). Held by the caller."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    user_id: str | None = None  # raw; the Ingestor stores only its salted hash
    exchanges: list[Exchange] = field(default_factory=list)

    def reset(self) -> None:
        self.exchanges.clear()

    def history(self) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = []
        for exchange in self.exchanges:
            messages.append({"role": "user", "content": exchange.prompt})
            messages.append({"role": "assistant", "content": exchange.answer})
        return messages


class Turn:
    """One answer being generated. Iterate for text deltas; when the iteration ends the turn
    is logged, appended to its session, and `interaction_id` / `result` are set.

    Leaving the iteration early (or `cancel()`) stops the generation; a cancelled turn is
    neither logged nor kept in the history.
    """

    def __init__(
        self,
        engine: ChatEngine,
        session: ChatSession | None,
        prompt: str,
        stream: GenerationStream,
        adapter: str | None,
        *,
        source: str = "chat",
        user_id: str | None = None,
        interaction_id: str | None = None,
        stop: Sequence[str] = (),
        resend_is_retry: bool = False,
        client_history: bool = False,
    ) -> None:
        """`session` None: a stateless turn (the API), logged with `user_id` and no session;
        `interaction_id`: the id to log it under (the API's completion id, known up front);
        `stop`: strings the answer is cut before; `resend_is_retry`: an earlier answer to the
        same context by the same user gets implicit negative feedback once this one is logged;
        `client_history`: the assistant messages before the prompt were written by a client, not
        known to be the model's, so they are stored as context only (weight 0, never trained on)."""
        self._engine = engine
        self.session = session
        self.prompt = prompt
        self._stream = stream
        self.adapter_id = adapter
        self.adapter_version = adapter or BASE_LABEL
        self.source = source
        self.user_id = session.user_id if session is not None else user_id
        self.id = interaction_id or uuid.uuid4().hex  # explicit: two identical turns are still two interactions
        self.stop = tuple(stop)
        self.resend_is_retry = resend_is_retry
        self.client_history = client_history
        self.text = ""
        self.interaction_id: str | None = None  # `id` once the turn is logged
        self.replaced_id: str | None = None  # the earlier answer a resend was recorded as a retry of
        self.log_error: str | None = None
        self._result: GenerationResult | None = None
        self._cancelled = False
        self.started_at = datetime.now(UTC)

    @property
    def messages(self) -> list[dict[str, str]]:
        """The messages actually sent to the model (system prompt first, history trimmed to fit)."""
        return self._stream.messages

    @property
    def result(self) -> GenerationResult:
        if self._result is None:
            raise RuntimeError("The turn has not finished; iterate it first.")
        return self._result

    @property
    def done(self) -> bool:
        return self._result is not None

    def __iter__(self) -> Iterator[str]:
        return self._run()

    def cancel(self) -> None:
        """Stop generating at the next token (the turn is then not logged). Thread-safe."""
        self._cancelled = True
        self._stream.cancel()

    def _run(self) -> Iterator[str]:
        pieces: list[str] = []
        stops = StopStrings(self.stop) if self.stop else None
        deltas = iter(self._stream)
        try:
            for delta in deltas:
                if stops is not None:
                    if stops.hit:
                        continue  # what was generated before the scheduler saw the cancel
                    delta, hit = stops.feed(delta)
                    if hit:
                        self._stream.cancel()  # a stop string ends the answer: generate no more
                if delta:
                    pieces.append(delta)
                    yield delta
            tail = stops.flush() if stops is not None and not stops.hit else ""
            if tail:
                pieces.append(tail)
                yield tail
        finally:
            deltas.close()  # left early: stops the generation thread now, not at garbage collection
        self.text = "".join(pieces)
        result = self._stream.result
        if stops is not None and stops.hit and not self._cancelled:
            result = dataclasses.replace(result, text=self.text, finish_reason="stop")
        self._result = result
        if result.finish_reason != "cancelled":
            self._engine._finish(self)

    def consume(self) -> str:
        """Drain the turn; returns the whole answer."""
        for _ in self:
            pass
        return self.text


class ChatEngine:
    """Model + adapter hot-swap + logging for any number of chat sessions."""

    def __init__(
        self,
        settings: Settings,
        *,
        model: LoadedModel | str | Path | None = None,
        store: Store | None = None,
    ) -> None:
        """`model`: an already loaded base, or a model folder; default: `load_base_model(settings)`."""
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.ingestor = Ingestor(settings, self.store)
        self.registry = Registry(settings, self.store)
        if isinstance(model, LoadedModel):
            loaded = model
        else:
            loaded = load_base_model(settings if model is None else model)
        # Attention: SDPA by default (`CL_CHAT_ATTENTION`; bench/chat.py measures both).
        # Weights in the serving precision (`CL_CHAT_DTYPE`), the one evaluation judged the
        # adapter in: by default the fastest this CPU measured (float32, bfloat16 or int4).
        self.precision = serving_precision(loaded, settings)
        if loaded.model.config._attn_implementation != settings.chat_attention:
            loaded.model.set_attn_implementation(settings.chat_attention)
        self.adapters = AdapterSet(
            loaded, merge=settings.chat_merge_adapter, batching=settings.chat_batching, max_batch=settings.chat_max_batch,
            routing=settings.scope_routing,
        )
        self.model_version = Path(loaded.source).name[:128]
        self._serving: str | None = None
        self._deployment_id: int | None = None
        self._loaded_sha: dict[str, str] = {}
        self.swap_error: str | None = None  # why the deployed adapter was refused, if it was
        self._swap_lock = threading.Lock()
        self._metrics_lock = threading.Lock()
        self._knowledge: tuple[float, str] | None = None  # (mtime, rendered facts)
        self.refresh()
        # Loading computed in this thread: its OpenMP workers would halve the generation
        # thread's speed for as long as they exist (see `cl_assets.core.model.threads`).
        release_openmp_threads()

    # -- which adapter serves --------------------------------------------------------------

    @property
    def base_model(self) -> Any:
        """The one base model object; the same object before and after any adapter swap."""
        return self.adapters.base_model

    @property
    def adapter_id(self) -> str | None:
        """The adapter answering new turns (None: the plain base model)."""
        return self._serving

    @property
    def adapter_version(self) -> str:
        """Label of the adapter answering new turns: its snapshot id, or `base`."""
        return self._serving or BASE_LABEL

    def refresh(self) -> str | None:
        """Follow the registry: when the current deployment changed, swap to its adapter.

        Costs one indexed query when nothing changed. An adapter whose files do not match the
        registry's hash (or that fails to load) is refused: the error is logged, kept in
        `swap_error`, and the previous adapter keeps serving until the next deployment.
        Returns the adapter id now serving.
        """
        with self._swap_lock:
            row = self.store.current_deployment()
            deployment_id = row.id if row else None
            if deployment_id == self._deployment_id:
                return self._serving
            self._deployment_id = deployment_id
            adapter_id = row.adapter_id if row else None
            try:
                if adapter_id is not None:
                    self._load(adapter_id)
                # Waits for an answer in flight (it holds the AdapterSet lock).
                self.adapters.activate(adapter_id)
            except (RegistryError, ModelError, OSError, ValueError) as exc:
                self.swap_error = f"deployment {deployment_id} (adapter {adapter_id}) refused: {exc}"
                log.error("Keeping %s: %s", self.adapter_version, self.swap_error)
                return self._serving
            finally:
                release_openmp_threads()  # this thread now waits; only the generation thread computes
            if adapter_id != self._serving:
                log.info("Chat now answers with %s (was %s)", adapter_id or BASE_LABEL, self.adapter_version)
            self._serving = adapter_id
            self.swap_error = None
            return self._serving

    def _load(self, adapter_id: str) -> None:
        # Checked on every swap, even to an adapter in memory: files changed on disk are refused.
        path, files = self.registry.read_verified(adapter_id)
        registered = self.store.get_adapter(adapter_id)
        sha = registered.files_sha256 if registered else ""
        if self._loaded_sha.get(adapter_id) == sha and adapter_id in self.adapters.loaded:
            return
        previous = self._loaded_sha.get(adapter_id)
        if previous is not None and previous != sha:
            # The same snapshot was retrained and re-registered: drop the stale weights first.
            with self.adapters.using(None):
                self.adapters.unload(adapter_id)
                del self._loaded_sha[adapter_id]
                if self._serving == adapter_id:
                    self._serving = None
                    self._deployment_id = None  # reloaded by a request: follow the registry again next turn
        self.adapters.ensure_loaded(adapter_id, path, weights=AdapterWeights.from_files(files, path))
        self._loaded_sha[adapter_id] = sha
        judged = ((registered.eval_report if registered else None) or {}).get("precision")
        if judged and judged != self.precision.name:
            log.warning("Adapter %s was evaluated in %s but is served in %s: its answers may differ from the "
                        "evaluated ones (set CL_CHAT_DTYPE=%s to serve it as judged)", adapter_id, judged,
                        self.precision.name, judged)  # fmt: skip

    # -- prompts -------------------------------------------------------------------------------

    def system_prompt(self) -> str:
        """The configured system prompt, plus the top knowledge facts when enabled."""
        prompt = self.settings.system_prompt
        if not self.settings.knowledge_in_prompt:
            return prompt
        facts = self._knowledge_text()
        return f"{prompt}\n\nFacts from earlier conversations that people rated helpful:\n{facts}" if facts else prompt

    def _knowledge_text(self) -> str:
        from cl_assets.core.knowledge import load_facts, top_facts

        path = self.settings.knowledge_path
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            if self._knowledge is None or self._knowledge[0] != -1.0:
                log.warning("CL_KNOWLEDGE_IN_PROMPT is on but %s does not exist yet; materialize knowledge_facts", path)
                self._knowledge = (-1.0, "")
            return ""
        if self._knowledge is None or self._knowledge[0] != mtime:  # re-read only when the file changed
            self._knowledge = (mtime, top_facts(load_facts(path), KNOWLEDGE_FACTS))
        return self._knowledge[1]

    # -- turns ---------------------------------------------------------------------------------

    def new_session(self, session_id: str | None = None, user_id: str | None = None) -> ChatSession:
        return ChatSession(id=session_id or uuid.uuid4().hex, user_id=user_id)

    def check_message(self, message: str) -> str:
        """The message as it will be answered, or a `ChatError` saying what to change."""
        if not isinstance(message, str) or not message.strip():
            raise ChatError("Type a message first.")
        limit = self.settings.max_message_chars
        if len(message) > limit:
            raise MessageTooLongError(
                f"Your message is {len(message):,} characters long; the limit is {limit:,} "
                "(CL_MAX_MESSAGE_CHARS). Shorten it and send it again."
            )
        if "\x00" in message:
            raise ChatError("Your message contains a NUL character; remove it and send it again.")
        try:
            message.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: what a terminal makes of invalid UTF-8
            raise ChatError("Your message is not valid text (broken characters); retype it and send it again.") from None
        return message

    def ask(self, session: ChatSession, message: str) -> Turn:
        """Start answering `message` in `session`; iterate the returned turn for the answer.

        Raises `ChatError` (e.g. `MessageTooLongError`) or `PromptTooLongError` before anything
        is generated, with a message for the person chatting.
        """
        message = self.check_message(message)
        self.refresh()
        messages = [{"role": "system", "content": self.system_prompt()}, *session.history(), {"role": "user", "content": message}]
        adapter = self.adapters.route(self._serving, messages)  # outside the adapter's scope the base answers
        stream = self.adapters.stream_generate(
            messages,
            adapter,
            max_new_tokens=self.settings.max_new_tokens,
            temperature=self.settings.temperature,
        )
        return Turn(self, session, message, stream, adapter)

    def regenerate(self, session: ChatSession, index: int = -1) -> Turn:
        """Answer exchange `index` (default: the last) again.

        The replaced answer gets implicit negative feedback (kind `regenerate`); it and every
        later exchange leave the history, as in any chat UI's retry.
        """
        if not session.exchanges:
            raise ChatError("There is no answer to regenerate yet.")
        try:
            replaced = session.exchanges[index]
        except IndexError:
            raise ChatError(f"There is no answer number {index} to regenerate.") from None
        position = session.exchanges.index(replaced)
        if replaced.interaction_id is not None:
            self.ingestor.record_feedback(replaced.interaction_id, False, kind="regenerate")
        del session.exchanges[position:]
        return self.ask(session, replaced.prompt)

    # -- the API: whole conversations, a model per request ------------------------------------

    def models(self) -> list[ServedModel]:
        """What `complete(model=...)` accepts: the aliases of the deployed adapter, the base
        model, and every registered adapter that is not tainted."""
        serving = self.refresh()  # what the aliases name now (one indexed query when unchanged)
        names = [ServedModel(alias, serving, None) for alias in DEPLOYED_ALIASES]
        names.append(ServedModel(BASE_LABEL, None, None))
        names += [ServedModel(a.id, a.id, a.created_at) for a in self.store.list_adapters() if not a.tainted]
        return names

    def resolve_model(self, name: str) -> str | None:
        """The adapter that answers for `name` (None: the base model), loaded and ready.

        `cl` / `deployed`: the registry's deployed adapter (followed now, as a page turn does);
        `base` or the base model's folder name: the base; a snapshot id: that adapter, read and
        checked against the registry's hash once per registered version (`Registry.read_verified`),
        so the bytes that serve are the bytes that were checked. Raises `UnknownModelError` or
        `ModelRefusedError` (tainted, tampered, missing or unloadable; details in the log only).
        """
        if name in DEPLOYED_ALIASES:
            return self.refresh()
        if name in (BASE_LABEL, self.model_version):
            return None
        registered = self.store.get_adapter(name) if is_snapshot_id(name) else None
        if registered is None:
            raise UnknownModelError("There is no such model; GET /v1/models lists the models you can use.")
        if registered.tainted:
            raise ModelRefusedError(f"Adapter {name} is tainted (trained on data that was erased) and may not answer.")
        with self._swap_lock:
            if self._loaded_sha.get(name) == registered.files_sha256 and name in self.adapters.loaded:
                return name
            try:
                self._load(name)
            except (RegistryError, ModelError, OSError, ValueError) as exc:
                log.error("Adapter %s refused for a request: %s", name, exc)
                raise ModelRefusedError(
                    f"Adapter {name} may not answer: its files fail the registry's check or do not load (see the server log)."
                ) from None
            finally:
                release_openmp_threads()
        return name

    def complete(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        model: str = DEPLOYED_ALIASES[0],
        max_tokens: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        user_id: str | None = None,
        interaction_id: str | None = None,
        source: str = "api",
    ) -> Turn:
        """Start answering a whole conversation sent by a client; iterate the returned turn.

        `messages` (roles checked by the caller, the last one the user's) are used as sent: no
        session history is added and nothing is trimmed, so a conversation that does not fit
        raises `ContextLengthError` (dropping part of it would answer another conversation).
        Without a system message the configured system prompt goes first, since the adapters
        were trained under it. Defaults: `CL_MAX_NEW_TOKENS`, `CL_TEMPERATURE`, top_p 1.
        With a `user_id`, sending the same conversation again counts as a retry of the
        earlier answer (implicit negative feedback), as the page's retry button does. The
        assistant messages sent are stored as context only (weight 0): anyone can write one,
        and an answer CL really gave is an interaction of its own, trained on as such.
        """
        if not messages or messages[-1].get("role") != "user":
            raise ChatError("The last message must be the user's.")
        prompt = self.check_message(messages[-1]["content"])
        adapter = self.resolve_model(model)
        sent = [{"role": m["role"], "content": m["content"]} for m in messages]
        if sent[0]["role"] != "system":
            sent.insert(0, {"role": "system", "content": self.system_prompt()})
        adapter = self.adapters.route(adapter, sent)  # outside the adapter's scope the base answers
        stream = self.adapters.stream_generate(
            sent,
            adapter,
            max_new_tokens=max_tokens or self.settings.max_new_tokens,
            temperature=self.settings.temperature if temperature is None else temperature,
            top_p=1.0 if top_p is None else top_p,
            seed=seed,
            trim=False,
        )
        return Turn(self, None, prompt, stream, adapter, source=source, user_id=user_id, interaction_id=interaction_id,
                    stop=stop, resend_is_retry=user_id is not None, client_history=True)  # fmt: skip

    def feedback(self, interaction_id: str, helpful: bool | None) -> int:
        """Record 👍 (True), 👎 (False) or a cleared rating (None); returns the event id."""
        return self.ingestor.record_feedback(interaction_id, helpful, kind="explicit")

    def rate(self, session: ChatSession, index: int, helpful: bool | None) -> int:
        """`feedback` on the answer of exchange `index` of `session`, remembered in the session."""
        try:
            exchange = session.exchanges[index]
        except IndexError:
            raise ChatError("Wait for the answer to finish, then rate it.") from None
        if exchange.interaction_id is None:
            raise ChatError("This answer was not recorded, so it cannot be rated.")
        event = self.feedback(exchange.interaction_id, helpful)
        exchange.helpful = helpful
        return event

    def _finish(self, turn: Turn) -> None:
        result = turn.result
        context = turn.messages[:-1]
        if turn.client_history:
            context = [{**m, "weight": 0} if m["role"] == "assistant" else m for m in context]
        try:
            ingested = self.ingestor.ingest_interaction(
                id=turn.id,
                timestamp=turn.started_at,
                session_id=turn.session.id if turn.session is not None else None,
                user_id=turn.user_id,
                prompt=turn.prompt,
                response=turn.text,
                # What the model was given before the prompt: the system prompt and the history
                # as trimmed to fit, stored as the turn's context (sanitized by the ingestor).
                context=context,
                source=turn.source,
                model_version=self.model_version,
                adapter_version=turn.adapter_id,
                latency_ms=result.latency_ms,
                ttft_ms=result.ttft_ms,
                prompt_tokens=result.prompt_tokens,
                completion_tokens=result.completion_tokens,
                tokens_per_s=result.tokens_per_s,
            )
        except IngestError as exc:  # the message names fields and limits, never the text
            turn.log_error = f"This answer was not recorded: {exc}"
            log.error("Turn %s (%s) not logged: %s", turn.id, turn.source, exc)
        else:
            turn.interaction_id = ingested.id
            if turn.resend_is_retry and ingested.context_id is not None:
                turn.replaced_id = self.store.latest_answer_to(ingested.context_id, excluding=ingested.id)
                if turn.replaced_id is not None:  # the same user sent the same conversation again
                    self.ingestor.record_feedback(turn.replaced_id, False, kind="regenerate")
        self._write_metrics(turn, result)
        if turn.session is not None:
            turn.session.exchanges.append(Exchange(turn.prompt, turn.text, turn.interaction_id, turn.adapter_version))

    def _write_metrics(self, turn: Turn, result: GenerationResult) -> None:
        line = {
            "time": datetime.now(UTC).isoformat(),
            "source": turn.source,
            "interaction_id": turn.interaction_id,
            "model_version": self.model_version,
            "adapter_version": turn.adapter_version,
            "latency_ms": round(result.latency_ms, 2),
            "ttft_ms": round(result.ttft_ms, 2),
            "prompt_tokens": result.prompt_tokens,
            "completion_tokens": result.completion_tokens,
            "tokens_per_s": round(result.tokens_per_s, 2),
            "finish_reason": result.finish_reason,
            "prompt_messages": result.prompt_messages,
        }
        path = self.settings.generation_metrics_path
        with self._metrics_lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as fh:  # one short append per turn
                fh.write(json.dumps(line, sort_keys=True) + "\n")


__all__ = [
    "BASE_LABEL",
    "DEPLOYED_ALIASES",
    "ChatEngine",
    "ChatError",
    "ChatSession",
    "Exchange",
    "MessageTooLongError",
    "ModelRefusedError",
    "ServedModel",
    "Turn",
    "UnknownModelError",
]
