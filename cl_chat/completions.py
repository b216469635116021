"""The OpenAI chat-completions contract without the web: the request, the conversation it
stands for, the errors it may get, and the shapes of answers, chunks and model lists.

`cl_chat.api` maps HTTP onto this module and the engine. Nothing here imports FastAPI, so what
is refused, with which status and code, lives in one place and is testable without a server.
Error messages name fields, positions and limits, never what a message said.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from cl_assets.core.conversation import ConversationError, check_roles
from cl_assets.core.ingest import ID_PATTERN, describe_errors
from cl_assets.core.model import ContextLengthError, GenerationResult, PromptTooLongError
from cl_assets.settings import Settings
from cl_chat.engine import BASE_LABEL, ChatEngine, ChatError, ModelRefusedError, ServedModel, Turn, UnknownModelError

#: Roles a client may send, as stored (`developer` is OpenAI's newer name for `system`).
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4  # as OpenAI: more stop strings are refused
SEED_RANGE = 2**64  # a torch generator takes a seed in [0, 2**64); negative seeds wrap around


class ApiError(Exception):
    """An answer in OpenAI's error shape: `{"error": {"message", "type", "param", "code"}}`."""

    def __init__(
        self, status: int, message: str, *, type: str = "invalid_request_error", param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # name, refusal, ...: accepted and ignored

    role: str
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: StrictBool = False


class ChatCompletionRequest(BaseModel):
    """OpenAI's request body. Unknown fields are ignored; the ones asking for what CL cannot do
    (several choices, tools, functions) are refused by `conversation()` instead, since a client
    relying on them would misread the answer."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1, max_length=128)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=SEED_RANGE)
    user: str | None = Field(None, max_length=256)
    n: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None

    @property
    def stops(self) -> list[str]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return [s for s in stops if s]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class FeedbackRequest(BaseModel):
    """`POST /v1/feedback`: a rating of a completion, by its id (`helpful` null clears it)."""

    model_config = ConfigDict(extra="ignore")

    id: str = Field(pattern=ID_PATTERN)
    helpful: StrictBool | None


def _refuse_unsupported(request: ChatCompletionRequest) -> None:
    if request.n not in (None, 1):
        raise ApiError(400, "Only one choice per request is supported (n=1).", param="n", code="unsupported_value")
    if request.tools or request.functions or request.tool_choice not in (None, "none") or request.function_call not in (None, "none"):
        param = "tools" if request.tools or request.tool_choice not in (None, "none") else "functions"
        raise ApiError(400, "Tools and function calling are not supported by this model.", param=param, code="unsupported_parameter")
    if len(request.stops) > MAX_STOPS:
        raise ApiError(400, f"At most {MAX_STOPS} stop strings are supported.", param="stop", code="unsupported_value")


def _text(content: str | list[ContentPart] | None, index: int) -> str:
    """A message's content as one string: text parts joined by newlines; anything else refused."""
    if isinstance(content, str):
        return content
    if content is None:
        raise ApiError(400, f"messages[{index}].content is required.", param=f"messages[{index}].content", code="missing_content")
    texts = []
    for j, part in enumerate(content):
        if part.type != "text" or part.text is None:
            raise ApiError(400, f"messages[{index}].content[{j}]: only text content parts are supported (no images, audio or files).",
                           param=f"messages[{index}].content[{j}].type", code="unsupported_content")  # fmt: skip
        texts.append(part.text)
    return "\n".join(texts)


def _check_text(text: str, index: int, limit: int) -> None:
    param = f"messages[{index}].content"
    if len(text) > limit:
        raise ApiError(400, f"{param} is {len(text):,} characters long; the limit is {limit:,} (CL_MAX_MESSAGE_CHARS).",
                       param=param, code="string_above_max_length")  # fmt: skip
    if "\x00" in text:
        raise ApiError(400, f"{param} contains a NUL character.", param=param, code="invalid_value")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. a "\ud800" escape in the JSON
        raise ApiError(400, f"{param} is not valid text (a lone surrogate).", param=param, code="invalid_value") from None


def conversation(request: ChatCompletionRequest, settings: Settings) -> list[dict[str, str]]:
    """The request's messages as the engine takes them, or an `ApiError` saying what to change.

    Checked before anything is generated, with the limits the store applies to every
    conversation (so an answer is never generated and then left unrecorded for its context):
    roles in the stored order (system first, then user and assistant alternating, ending with
    the user), each message at most `CL_MAX_MESSAGE_CHARS`, and the conversation plus the
    system prompt CL adds and the answer at most `CL_MAX_CONVERSATION_MESSAGES` messages.
    """
    _refuse_unsupported(request)
    limit = settings.max_conversation_messages
    given = len(request.messages)
    added = 0 if request.messages[0].role in ("system", "developer") else 1
    if given + added + 1 > limit:
        raise ApiError(400, f"{given} messages are too many: with the system prompt and the answer at most {limit} are stored "
                       "(CL_MAX_CONVERSATION_MESSAGES).", param="messages", code="too_many_messages")  # fmt: skip
    messages = []
    for i, message in enumerate(request.messages):
        role = ROLES.get(message.role)
        if role is None:
            raise ApiError(400, f"messages[{i}].role must be system, developer, user or assistant (tools are not supported).",
                           param=f"messages[{i}].role", code="invalid_value")  # fmt: skip
        text = _text(message.content, i)
        _check_text(text, i, settings.max_message_chars)
        messages.append({"role": role, "content": text})
    try:
        check_roles(messages, last="user")
    except ConversationError as exc:  # positions and role names only
        raise ApiError(400, f"messages: {exc}.", param="messages", code="invalid_value") from None
    return messages


def validation_error(errors: Sequence[Mapping[str, Any]], status: int) -> ApiError:
    """pydantic's (FastAPI's) validation errors as one `ApiError`: fields and rules, never input."""
    if any(e.get("type") == "json_invalid" for e in errors):
        return ApiError(status, "The request body is not valid JSON.", code="invalid_json")
    located = [{**e, "loc": tuple(p for p in e["loc"] if p != "body") or ("body",)} for e in errors]
    first = located[0]["loc"] if located else ("body",)
    param = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first).lstrip(".")
    return ApiError(status, describe_errors(located) or "Invalid request body.", param=None if param == "body" else param)


def api_error(exc: Exception) -> ApiError:
    """The engine's refusals in OpenAI's shape (what vLLM and OpenAI answer for the same)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, UnknownModelError):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, ModelRefusedError):
        return ApiError(403, str(exc), type="permission_error", param="model", code="model_refused")
    if isinstance(exc, ContextLengthError):
        return ApiError(400, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, (ChatError, PromptTooLongError)):
        return ApiError(400, str(exc), param="messages", code="invalid_value")
    raise TypeError(f"not a refusal: {type(exc).__name__}")


def start(engine: ChatEngine, request: ChatCompletionRequest) -> Turn:
    """Check the request and start its answer; the turn's id is the completion id (and the
    interaction id it is logged under, which `POST /v1/feedback` rates)."""
    messages = conversation(request, engine.settings)
    try:
        return engine.complete(
            messages,
            model=request.model,
            max_tokens=request.max_completion_tokens or request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            stop=request.stops,
            seed=None if request.seed is None else request.seed % SEED_RANGE,
            user_id=request.user,
            interaction_id=f"chatcmpl-{uuid.uuid4().hex}",
        )
    except (ChatError, PromptTooLongError) as exc:
        raise api_error(exc) from None


# -- what goes back ----------------------------------------------------------------------------


def usage(result: GenerationResult) -> dict[str, int]:
    """Token counts as stored with the interaction; completion tokens are the tokens generated
    (with a stop string: up to the one that completed it, plus any the scheduler made before
    it saw the cancel)."""
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "total_tokens": result.prompt_tokens + result.completion_tokens}  # fmt: skip


def completion(turn: Turn, created: int) -> dict[str, Any]:
    """A finished turn as a `chat.completion`; `model` names what answered (snapshot id or base)."""
    result = turn.result
    return {
        "id": turn.id,
        "object": "chat.completion",
        "created": created,
        "model": turn.adapter_version,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": turn.text, "refusal": None},
                     "logprobs": None, "finish_reason": result.finish_reason}],  # fmt: skip
        "usage": usage(result),
    }


def chunk(turn: Turn, created: int, delta: Mapping[str, Any] | None, *, finish_reason: str | None = None,
          counts: dict[str, int] | None = None, with_usage: bool = False) -> dict[str, Any]:  # fmt: skip
    """A `chat.completion.chunk`: `delta` None makes the usage chunk (no choices)."""
    body: dict[str, Any] = {"id": turn.id, "object": "chat.completion.chunk", "created": created, "model": turn.adapter_version}
    body["choices"] = [] if delta is None else [{"index": 0, "delta": dict(delta), "logprobs": None, "finish_reason": finish_reason}]
    if with_usage:  # as OpenAI: every chunk carries `usage` (null) once the client asked for it
        body["usage"] = counts
    return body


def event(payload: Mapping[str, Any] | str) -> str:
    """One server-sent event line (`data: [DONE]` ends the stream)."""
    data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"data: {data}\n\n"


def model_list(models: list[ServedModel], started: int) -> dict[str, Any]:
    """`GET /v1/models` in OpenAI's list shape; `root` says what a name answers with now."""
    return {
        "object": "list",
        "data": [
            {"id": m.id, "object": "model", "created": int(m.created.timestamp()) if m.created else started,
             "owned_by": "cl", "root": m.adapter_id or BASE_LABEL}  # fmt: skip
            for m in models
        ],
    }


__all__ = [
    "ApiError",
    "ChatCompletionRequest",
    "FeedbackRequest",
    "api_error",
    "chunk",
    "completion",
    "conversation",
    "event",
    "model_list",
    "start",
    "usage",
    "validation_error",
]
