"""The OpenAI-compatible HTTP API (`/v1`), served beside the Gradio page by `cl_chat.server`.

Thin: routes map HTTP onto `cl_chat.completions` (the contract) and the `ChatEngine` the page
uses, so both share the model, the adapter hot-swap, the batch scheduler and the logging.

- `POST /v1/chat/completions` (streamed as server-sent events, or whole), `GET /v1/models`,
  `POST /v1/feedback`.
- `ApiGuard`, around every route: with `CL_API_KEY` a call needs `Authorization: Bearer <key>`
  (401), without it only loopback clients are answered (403); then the body is read whole, up
  to `CL_API_MAX_BODY_BYTES` counted on the bytes that arrive (413), before any route runs.
- Every error is OpenAI's `{"error": {...}}`; nothing in one echoes what a message said, and an
  unexpected failure is logged by type and place only (its text could hold a message's words).
- A client that goes away stops its answer: the turn is cancelled, the scheduler drops the row,
  and nothing is logged for it.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cl_assets.core.store import UnknownInteractionError
from cl_assets.settings import Settings
from cl_chat import completions as oa
from cl_chat.engine import ChatEngine, Turn

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
_DONE = object()


def api_key(settings: Settings) -> str | None:
    """`CL_API_KEY`, or None when unset; an empty or spaced key is a mistake, not "no key"."""
    if settings.api_key is None:
        return None
    key = settings.api_key.get_secret_value()
    if not key or key != key.strip() or " " in key:
        raise ValueError("CL_API_KEY is set but empty or contains spaces; unset it or give it a long random value.")
    return key


def is_loopback(client: tuple[str, int] | list[Any] | None) -> bool:
    """True for 127.0.0.0/8 and ::1 (also IPv4-mapped); an unknown peer is not loopback."""
    if not client:
        return False
    try:
        address = ipaddress.ip_address(str(client[0]))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _error_response(error: oa.ApiError, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


class ApiGuard:
    """Who may call, and how much they may send, checked before any route reads anything."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, key: str | None, max_body: int) -> None:
        self.app = app
        self.key = key.encode() if key is not None else None
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        body = await self._read_body(scope, receive)
        if body is None:  # the client left while sending
            return
        if isinstance(body, JSONResponse):
            await body(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # then the real channel: a disconnect reaches the route

        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, replay, tracked)
        except Exception as exc:  # noqa: BLE001 - answered in OpenAI's shape; logged without its text
            frames = traceback.extract_tb(exc.__traceback__)
            where = f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?"
            log.error("%s %s failed: %s at %s", scope.get("method"), scope.get("path"), type(exc).__name__, where)
            if not started:
                error = oa.ApiError(500, "The server failed to answer this request (see its log).", type="server_error")
                await _error_response(error)(scope, replay, send)

    def _refusal(self, scope: Scope) -> JSONResponse | None:
        if self.key is None:
            if is_loopback(scope.get("client")):
                return None
            return _error_response(oa.ApiError(
                403, "This API answers loopback clients only; set CL_API_KEY on the server to serve others.",
                type="permission_error", code="loopback_only"))  # fmt: skip
        headers = dict(scope.get("headers") or [])
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.key):
            return None
        message = ("Incorrect API key provided." if scheme else
                   "You didn't provide an API key: send it in an Authorization header (Authorization: Bearer YOUR_KEY).")  # fmt: skip
        return _error_response(oa.ApiError(401, message, code="invalid_api_key"), {"WWW-Authenticate": "Bearer"})

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes | JSONResponse | None:
        too_big = _error_response(oa.ApiError(
            413, f"The request body is over {self.max_body:,} bytes (CL_API_MAX_BODY_BYTES).", code="request_too_large"))  # fmt: skip
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            return too_big
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:  # counted on what arrives: a chunked body has no Content-Length
                return too_big
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


async def _next(deltas: Any) -> Any:
    # In a worker thread: the turn blocks on its token queue. Abandoned on cancel, so a client
    # that leaves is let go at once; the turn's cancel flag then stops the thread's wait too.
    return await anyio.to_thread.run_sync(next, deltas, _DONE, abandon_on_cancel=True)


async def _stream(turn: Turn, include_usage: bool) -> AsyncIterator[str]:
    """The answer as server-sent events: a role chunk, content chunks, the finish chunk, the
    usage chunk when asked for, then `[DONE]`. Leaving early (the client went away) cancels."""
    created = int(time.time())
    deltas = iter(turn)
    finished = False
    try:
        yield oa.event(oa.chunk(turn, created, {"role": "assistant", "content": ""}, with_usage=include_usage))
        while (delta := await _next(deltas)) is not _DONE:
            yield oa.event(oa.chunk(turn, created, {"content": delta}, with_usage=include_usage))
        finished = True
        result = turn.result
        yield oa.event(oa.chunk(turn, created, {}, finish_reason=result.finish_reason, with_usage=include_usage))
        if include_usage:
            yield oa.event(oa.chunk(turn, created, None, counts=oa.usage(result), with_usage=True))
    except Exception as exc:  # noqa: BLE001 - after the response started an error can only be an event
        finished = True
        log.error("Streamed completion %s failed: %s", turn.id, type(exc).__name__)
        yield oa.event(oa.ApiError(500, "The answer failed (see the server log).", type="server_error").body())
    finally:
        if not finished:
            turn.cancel()
    yield oa.event("[DONE]")


async def _whole(turn: Turn, request: Request) -> None:
    """Generate the whole answer; a client that disconnects meanwhile cancels it."""

    async def watch() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass
        turn.cancel()

    failure: Exception | None = None
    async with anyio.create_task_group() as group:
        group.start_soon(watch)
        try:
            await anyio.to_thread.run_sync(turn.consume)
        except Exception as exc:  # noqa: BLE001 - re-raised below, not wrapped in an ExceptionGroup
            failure = exc
        group.cancel_scope.cancel()
    if failure is not None:
        raise failure


def build_api(engine: ChatEngine, settings: Settings) -> FastAPI:
    """The `/v1` app (mounted by `cl_chat.server`; also callable on its own, e.g. in tests)."""
    api = FastAPI(title="CL API", docs_url=None, redoc_url=None, openapi_url=None)
    api.add_middleware(ApiGuard, key=api_key(settings), max_body=settings.api_max_body_bytes)
    started = int(time.time())

    @api.exception_handler(oa.ApiError)
    async def _api_error(request: Request, exc: oa.ApiError) -> JSONResponse:
        return _error_response(exc)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # OpenAI answers a bad chat request with 400; elsewhere FastAPI's 422 stays.
        status = 400 if request.url.path.endswith("/chat/completions") else 422
        return _error_response(oa.validation_error(exc.errors(), status))

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _error_response(oa.ApiError(exc.status_code, str(exc.detail), code=code))

    @api.post("/chat/completions", response_model=None)
    async def chat_completions(body: oa.ChatCompletionRequest, request: Request) -> Any:
        # In a thread: a first request for an adapter reads and hashes its files.
        turn = await anyio.to_thread.run_sync(oa.start, engine, body)
        if body.stream:
            return StreamingResponse(_stream(turn, body.include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})  # fmt: skip
        await _whole(turn, request)
        return oa.completion(turn, int(time.time()))

    @api.get("/models")
    async def models() -> dict[str, Any]:
        return oa.model_list(await anyio.to_thread.run_sync(engine.models), started)

    @api.post("/feedback")
    async def feedback(body: oa.FeedbackRequest) -> dict[str, Any]:
        try:
            event_id = await anyio.to_thread.run_sync(engine.feedback, body.id, body.helpful)
        except UnknownInteractionError:
            raise oa.ApiError(404, "No completion with this id is stored.", param="id", code="not_found") from None
        return {"object": "feedback", "id": body.id, "helpful": body.helpful, "event_id": event_id}

    return api
