"""The OpenAI-compatible API on a real server (uvicorn on a free 127.0.0.1 port, in a thread),
driven by the official `openai` client and answered by the tiny real model with real adapters."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from sqlalchemy import select

from cl_assets.core.registry import Registry, adapter_dir
from cl_assets.core.store import FeedbackEvent, Store
from cl_assets.settings import Settings
from cl_chat.engine import ChatEngine
from tests.conftest import make_settings
from tests.helpers import free_port, register_adapter, wait_for

A, B = "20261120_101500", "20261121_093000"  # registered; A deployed
TAINTED, TAMPERED = "20261122_080000", "20261123_080000"
SYSTEM = "You are a test assistant."
MARKER = "zq-marker-7731"  # text of a request that must never come back in an error or a log line
MAX_BODY = 64_000


@dataclass
class Api:
    url: str  # http://127.0.0.1:PORT/v1
    engine: ChatEngine
    settings: Settings

    @property
    def store(self) -> Store:
        return self.engine.store

    def client(self, key: str = "unused") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0, timeout=300)

    def ask(self, content: str, **kwargs: Any) -> Any:
        kwargs.setdefault("model", "cl")
        return self.client().chat.completions.create(messages=[{"role": "user", "content": content}], **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=300, **kwargs)


def serve(settings: Settings, model: Any) -> tuple[Any, str, ChatEngine]:
    from cl_chat.server import launch

    engine = ChatEngine(settings, model=model)
    port = free_port()
    served = launch(engine, settings, "127.0.0.1", port, block=False)
    return served, f"http://127.0.0.1:{port}", engine


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]) -> Iterator[Api]:
    """One server for the module: adapters A and B registered (A deployed), a tainted one and
    one whose files were changed after registration."""
    home = tmp_path_factory.mktemp("api")
    settings = make_settings(home, max_new_tokens=8, system_prompt=SYSTEM, api_max_body_bytes=MAX_BODY,
                             max_conversation_messages=12)  # fmt: skip
    store = Store.from_settings(settings)
    for sid, source in ((A, A), (B, B), (TAINTED, A), (TAMPERED, B)):
        register_adapter(settings, store, sid, folder=tiny_adapter_dirs[source])
    store.update_adapter(TAINTED, tainted=True)
    (adapter_dir(settings, TAMPERED) / "adapter_model.safetensors").write_bytes(b"not the registered weights")
    Registry(settings, store).deploy(A, actor="test", reason="serve A")
    served, root, engine = serve(settings, tiny_model_dir)
    try:
        yield Api(f"{root}/v1", engine, settings)
    finally:
        served.close()
        store.close()


def error_of(response: httpx.Response) -> dict[str, Any]:
    """The OpenAI error object of a response, checked for its shape and for echoed text."""
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert MARKER not in response.text
    return body["error"]


def events(api: Api, payload: dict[str, Any]) -> list[str]:
    """The raw `data:` lines of a streamed answer."""
    with httpx.stream("POST", api.url + "/chat/completions", json=payload, timeout=300) as response:
        assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
        return [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]


# -- answers ---------------------------------------------------------------------------------


def test_a_completion_is_logged_sanitized_with_its_context_and_usage(api: Api, caplog: pytest.LogCaptureFixture) -> None:
    metrics_before = api.settings.generation_metrics_path.read_text().count("\n") if api.settings.generation_metrics_path.exists() else 0
    with caplog.at_level(logging.INFO):
        answer = api.client().chat.completions.create(
            model="cl",
            user="alice@example.com",
            messages=[
                {"role": "user", "content": "Hi, I am jane.doe@example.com."},
                {"role": "assistant", "content": "Hello! Call me on +1 415 555 0100 if needed."},
                {"role": "user", "content": [{"type": "text", "text": "My card is 4111 1111 1111 1111."},
                                             {"type": "text", "text": f"Where is my order? {MARKER}"}]},  # fmt: skip
            ],
        )
    assert answer.object == "chat.completion" and answer.model == A and len(answer.choices) == 1
    assert answer.choices[0].finish_reason in ("stop", "length") and answer.choices[0].message.role == "assistant"
    row = api.store.get_interaction(answer.id)  # the completion id is the interaction id
    assert row is not None and row.source == "api" and row.adapter_version == A and row.session_id is None
    assert row.response == answer.choices[0].message.content
    assert row.prompt == f"My card is [CREDIT_CARD].\nWhere is my order? {MARKER}"  # text parts joined
    assert api.store.conversation(answer.id)[:-1] == [
        {"role": "system", "content": SYSTEM},  # none was sent: the configured one went first
        {"role": "user", "content": "Hi, I am [EMAIL]."},
        {"role": "assistant", "content": "Hello! Call me on [PHONE] if needed.", "weight": 0},  # context only
        {"role": "user", "content": row.prompt},
    ]
    assert {"EMAIL", "PHONE", "CREDIT_CARD"} <= set(row.pii_types)
    assert row.user_hash and "alice" not in row.user_hash
    usage = answer.usage
    assert (usage.prompt_tokens, usage.completion_tokens) == (row.prompt_tokens, row.completion_tokens)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens and usage.completion_tokens > 0
    stored = " ".join(m[3] for m in api.store.iter_messages()) + " ".join(r.prompt + r.response for r in api.store.iter_interactions())
    for raw in ("jane.doe", "415 555 0100", "4111 1111", "alice@"):
        assert raw not in stored
    logged = " ".join(r.getMessage() for r in caplog.records if r.name.startswith(("cl_", "uvicorn", "fastapi")))
    assert "jane.doe" not in logged and MARKER not in logged
    lines = api.settings.generation_metrics_path.read_text().splitlines()
    assert len(lines) == metrics_before + 1 and '"source": "api"' in lines[-1] and answer.id in lines[-1]


def test_a_client_system_prompt_is_used_as_sent(api: Api) -> None:
    answer = api.client().chat.completions.create(
        model="base", messages=[{"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hello?"}]
    )
    assert answer.model == "base" and api.store.get_interaction(answer.id).adapter_version is None
    assert api.store.conversation(answer.id)[0] == {"role": "system", "content": "Be terse."}


def test_streamed_answer_equals_the_whole_one_and_ends_with_usage_and_done(api: Api) -> None:
    whole = api.ask("Tell me about order 100234.", max_tokens=12)
    stream = api.ask("Tell me about order 100234.", max_tokens=12, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same answer either way
    finish = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert [c.choices[0].finish_reason for c in finish] == [whole.choices[0].finish_reason]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None and all(c.usage is None for c in chunks[:-1])
    row = api.store.get_interaction(last.id)
    assert {c.id for c in chunks} == {last.id} and row.response == text
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (row.prompt_tokens, row.completion_tokens)
    raw = events(api, {"model": "cl", "messages": [{"role": "user", "content": "Hi"}], "stream": True, "max_tokens": 3})
    assert raw[-1] == "[DONE]" and '"finish_reason":"length"' in raw[-2]


# -- which model answers ---------------------------------------------------------------------


def test_model_picks_the_adapter_per_request(api: Api) -> None:
    question = "What is the status of Lot 42?"
    texts = {}
    for model, label in (("cl", A), ("deployed", A), ("base", "base"), (A, A), (B, B)):
        answer = api.ask(question, model=model)
        assert answer.model == label, model
        assert api.store.get_interaction(answer.id).adapter_version == (None if label == "base" else label)
        texts[model] = answer.choices[0].message.content
    assert texts["cl"] == texts["deployed"] == texts[A]
    assert len({texts["cl"], texts["base"], texts[B]}) == 3  # each really answered with its own weights
    assert api.engine.adapter_version == A  # a request for B swapped nothing for the page


def test_unknown_tainted_and_tampered_models_are_refused(api: Api) -> None:
    with pytest.raises(openai.NotFoundError) as unknown:
        api.ask("hi", model="gpt-4o")
    assert unknown.value.code == "model_not_found" and unknown.value.param == "model"
    for sid in (TAINTED, TAMPERED):
        with pytest.raises(openai.PermissionDeniedError) as refused:
            api.ask("hi", model=sid)
        assert refused.value.code == "model_refused" and sid in refused.value.message
    assert TAMPERED not in api.engine.adapters.loaded and TAINTED not in api.engine.adapters.loaded


def test_models_lists_the_aliases_the_base_and_untainted_adapters(api: Api) -> None:
    listed = {m.id: m for m in api.client().models.list()}
    assert set(listed) == {"cl", "deployed", "base", A, B, TAMPERED}  # tampered shows, and is refused on use
    assert listed["cl"].root == A and listed["base"].root == "base" and listed[B].owned_by == "cl"
    assert all(m.object == "model" and m.created > 0 for m in listed.values())


# -- feedback --------------------------------------------------------------------------------


def test_feedback_through_the_api_lands_in_the_store(api: Api) -> None:
    answer = api.ask("Rate me.")
    ok = api.post("/feedback", json={"id": answer.id, "helpful": True})
    assert ok.status_code == 200 and ok.json()["helpful"] is True
    assert api.store.get_interaction(answer.id).helpful is True
    assert api.post("/feedback", json={"id": answer.id, "helpful": None}).status_code == 200  # taken back
    assert api.store.get_interaction(answer.id).helpful is None
    missing = api.post("/feedback", json={"id": "chatcmpl-0000", "helpful": False})
    assert missing.status_code == 404 and error_of(missing)["param"] == "id"
    for bad in ({"id": answer.id, "helpful": "yes"}, {"id": answer.id}, {"helpful": True}, {"id": "no spaces", "helpful": True}):
        response = api.post("/feedback", json=bad)
        assert response.status_code == 422, bad
        error_of(response)
    with api.store.read() as s:
        kinds = [(e.kind, e.helpful) for e in s.scalars(select(FeedbackEvent).where(FeedbackEvent.interaction_id == answer.id))]
    assert kinds == [("explicit", True), ("explicit", None)]


def test_sending_the_same_conversation_again_is_a_retry(api: Api) -> None:
    conversation = [{"role": "user", "content": "Which lots ship today?"}]
    first = api.client().chat.completions.create(model="cl", messages=conversation, user="bob")
    assert api.store.get_interaction(first.id).regenerated is False
    other_user = api.client().chat.completions.create(model="cl", messages=conversation, user="carol")
    anonymous = api.client().chat.completions.create(model="cl", messages=conversation)
    again = api.client().chat.completions.create(model="cl", messages=conversation, user="bob")
    first_row = api.store.get_interaction(first.id)
    assert first_row.regenerated is True and first_row.helpful is None  # implicit, as the page's retry
    with api.store.read() as s:
        events_ = list(s.scalars(select(FeedbackEvent).where(FeedbackEvent.interaction_id == first.id)))
    assert [(e.kind, e.helpful) for e in events_] == [("regenerate", False)]
    for untouched in (other_user.id, anonymous.id, again.id):  # another person's question is no retry of bob's
        assert api.store.get_interaction(untouched).regenerated is False
    follow_up = [*conversation, {"role": "assistant", "content": again.choices[0].message.content},
                 {"role": "user", "content": "And tomorrow?"}]  # fmt: skip
    api.client().chat.completions.create(model="cl", messages=follow_up, user="bob")
    assert api.store.get_interaction(again.id).regenerated is False  # a follow-up is not a retry


# -- generation controls ---------------------------------------------------------------------


def test_stop_cuts_the_answer_before_the_stop_string_and_ends_generation(api: Api) -> None:
    full = api.ask("Describe the saffron.", max_tokens=24).choices[0].message.content
    # A stop string that first occurs in the second half of the answer.
    at = next(i for i in range(len(full) // 2, len(full) - 3) if full.index(full[i : i + 3]) == i)
    stop, expected = full[at : at + 3], full[:at]
    for stream in (False, True):
        if stream:
            chunks = list(api.ask("Describe the saffron.", max_tokens=24, stop=[stop, "\x01never"], stream=True,
                                  stream_options={"include_usage": True}))  # fmt: skip
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reason = next(c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason)
            answer_id, usage = chunks[-1].id, chunks[-1].usage
        else:
            answer = api.ask("Describe the saffron.", max_tokens=24, stop=stop)
            text, reason, answer_id, usage = answer.choices[0].message.content, answer.choices[0].finish_reason, answer.id, answer.usage
        assert (text, reason) == (expected, "stop"), stream
        assert api.store.get_interaction(answer_id).response == expected
        assert usage.completion_tokens < 24  # generation was cancelled at the stop string


def test_a_seed_makes_sampling_reproducible(api: Api) -> None:
    def sample(seed: int) -> str:
        return api.ask("Pick a word.", model="base", temperature=1.0, seed=seed, max_tokens=12).choices[0].message.content

    assert sample(7) == sample(7)
    assert sample(7) != sample(8)


def test_eight_concurrent_clients_get_the_one_at_a_time_answers(api: Api) -> None:
    prompts = [f"Question number {i}: where is order {1000 + i}?" for i in range(8)]
    alone = [api.ask(p, max_tokens=16).choices[0].message.content for p in prompts]
    together: list[str | None] = [None] * 8
    barrier = threading.Barrier(8)

    def client(i: int) -> None:
        own = api.client()
        barrier.wait()
        stream = own.chat.completions.create(model="cl", messages=[{"role": "user", "content": prompts[i]}], max_tokens=16, stream=True)
        together[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert together == alone


def test_a_client_that_disconnects_mid_stream_stops_its_generation(api: Api) -> None:
    scheduler = api.engine.adapters.scheduler
    finished_before, rows_before = len(scheduler.finished), api.store.count_interactions()
    metrics = api.settings.generation_metrics_path
    metric_lines = metrics.read_text().count("\n")
    budget = 1_900  # the tiny model's context is 2,048 tokens
    stream = api.ask("Tell me a very long story.", max_tokens=budget, stream=True)
    chunks = iter(stream)
    assert next(chunks).choices[0].delta.role == "assistant"
    next(chunks)  # the first text
    stream.close()  # the client goes away
    ended = wait_for(lambda: list(scheduler.finished)[finished_before:], what="the scheduler to end the request")
    assert [(e.finish_reason, e.max_new_tokens) for e in ended] == [("cancelled", budget)]
    assert ended[0].completion_tokens < budget
    time.sleep(0.2)  # nothing arrives late either
    assert api.store.count_interactions() == rows_before and metrics.read_text().count("\n") == metric_lines


# -- refusals --------------------------------------------------------------------------------


def _chat(**fields: Any) -> dict[str, Any]:
    return {"model": "cl", "messages": [{"role": "user", "content": f"hello {MARKER}"}], **fields}


BAD_REQUESTS = {
    "n=2": (_chat(n=2), "n", "unsupported_value"),
    "tools": (_chat(tools=[{"type": "function", "function": {"name": "lookup", "parameters": {}}}]), "tools", "unsupported_parameter"),
    "functions": (_chat(functions=[{"name": "lookup"}]), "functions", "unsupported_parameter"),
    "image part": (_chat(messages=[{"role": "user", "content": [{"type": "text", "text": MARKER},
                                                                {"type": "image_url", "image_url": {"url": "data:,x"}}]}]),
                   "messages[0].content[1].type", "unsupported_content"),  # fmt: skip
    "no messages": (_chat(messages=[]), "messages", None),
    "bad role": (_chat(messages=[{"role": "wizard", "content": MARKER}]), "messages[0].role", "invalid_value"),
    "tool role": (_chat(messages=[{"role": "user", "content": "x"}, {"role": "tool", "content": MARKER}]), "messages[1].role", "invalid_value"),
    "ends with the assistant": (_chat(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": MARKER}]), "messages", "invalid_value"),
    "two users in a row": (_chat(messages=[{"role": "user", "content": "a"}, {"role": "user", "content": MARKER}]), "messages", "invalid_value"),
    "no content": (_chat(messages=[{"role": "user", "content": None}]), "messages[0].content", "missing_content"),
    "blank question": (_chat(messages=[{"role": "user", "content": "   "}]), "messages", "invalid_value"),
    "too long a message": (_chat(messages=[{"role": "user", "content": MARKER + "x" * 8_000}]), "messages[0].content", "string_above_max_length"),
    "too many messages": (_chat(messages=[{"role": "user" if i % 2 == 0 else "assistant", "content": f"{MARKER} {i}"} for i in range(11)]),
                          "messages", "too_many_messages"),  # fmt: skip
    "too long a context": (_chat(messages=[{"role": "user", "content": "7 " * 3_000}]), "messages", "context_length_exceeded"),
    "max_tokens past the context": (_chat(max_tokens=5_000), "messages", "context_length_exceeded"),
    "temperature 3": (_chat(temperature=3), "temperature", None),
    "max_tokens 0": (_chat(max_tokens=0), "max_tokens", None),
    "five stops": (_chat(stop=["a", "b", "c", "d", "e"]), "stop", "unsupported_value"),
    "stream as text": (_chat(stream="yes"), "stream", None),
    "no model": ({"messages": [{"role": "user", "content": MARKER}]}, "model", None),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_a_400_in_openai_shape_without_their_text(api: Api, name: str) -> None:
    payload, param, code = BAD_REQUESTS[name]
    rows = api.store.count_interactions()
    response = api.post("/chat/completions", json=payload)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error")
    assert api.store.count_interactions() == rows


def test_malformed_bodies_get_a_400_not_a_crash(api: Api) -> None:
    for body in (b"{not json", b"[1, 2]", b"\xff\xfe", b""):
        response = api.post("/chat/completions", content=body, headers={"content-type": "application/json"})
        assert response.status_code == 400, body
        error_of(response)
    assert httpx.get(api.url + "/nothing-here").status_code == 404
    error_of(httpx.get(api.url + "/nothing-here"))


def test_oversize_bodies_get_a_413_whether_declared_or_not(api: Api) -> None:
    big = _chat(messages=[{"role": "user", "content": MARKER + "x" * MAX_BODY}])
    declared = api.post("/chat/completions", json=big)  # Content-Length says it all
    assert declared.status_code == 413 and error_of(declared)["code"] == "request_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: counted on the bytes that arrive
        yield b'{"model": "cl", "messages": [{"role": "user", "content": "'
        for _ in range(MAX_BODY // 1_000 + 1):
            yield b"x" * 1_000
        yield b'"}]}'

    streamed = api.post("/chat/completions", content=chunked(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and error_of(streamed)["code"] == "request_too_large"


# -- who may call ----------------------------------------------------------------------------


def test_with_cl_api_key_every_call_needs_the_bearer_key(tmp_path: Path, tiny_model_dir: Path) -> None:
    settings = make_settings(tmp_path, max_new_tokens=4, api_key="k-" + "s3cret" * 6, chat_auth="alice:pw-for-the-page")
    served, root, engine = serve(settings, tiny_model_dir)
    try:
        api = Api(f"{root}/v1", engine, settings)
        for key in ("unused", "k-" + "s3cret" * 5):
            with pytest.raises(openai.AuthenticationError) as refused:
                api.client(key).models.list()
            assert refused.value.status_code == 401 and refused.value.code == "invalid_api_key"
            assert key not in refused.value.message
        missing = httpx.get(f"{root}/v1/models")
        assert missing.status_code == 401 and error_of(missing)["code"] == "invalid_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        answer = api.client(settings.api_key.get_secret_value()).chat.completions.create(
            model="base", messages=[{"role": "user", "content": "hi"}])  # fmt: skip
        assert answer.choices[0].message.content is not None
        assert httpx.get(f"{root}/config").status_code == 401  # CL_CHAT_AUTH still guards the page
    finally:
        served.close()


def test_without_cl_api_key_only_loopback_clients_are_served(api: Api) -> None:
    from cl_chat.api import build_api, is_loopback

    assert api.client().models.list().data  # the test itself is a loopback client
    assert is_loopback(("::1", 1)) and is_loopback(("::ffff:127.0.0.1", 1)) and is_loopback(("127.8.9.10", 1))
    assert not is_loopback(("203.0.113.7", 1)) and not is_loopback(None) and not is_loopback(("localhost-ish", 1))
    app = build_api(api.engine, api.settings)

    async def status(client: tuple[str, int]) -> httpx.Response:
        transport = httpx.ASGITransport(app=app, client=client)
        async with httpx.AsyncClient(transport=transport, base_url="http://cl") as http:
            return await http.get("/models")

    outside = asyncio.run(status(("203.0.113.7", 40000)))
    assert outside.status_code == 403 and error_of(outside)["code"] == "loopback_only"
    assert asyncio.run(status(("127.0.0.1", 40000))).status_code == 200


def test_a_bad_cl_api_key_is_refused_at_start(tmp_path: Path) -> None:
    from cl_chat.api import api_key

    assert api_key(make_settings(tmp_path)) is None
    for bad in ("", "  ", "two words"):
        with pytest.raises(ValueError, match="CL_API_KEY"):
            api_key(make_settings(tmp_path, api_key=bad))


# -- the real model ----------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_answers_through_the_api_and_the_page_shares_the_port(tmp_path: Path, smollm2_dir: Path) -> None:
    settings = make_settings(tmp_path, max_new_tokens=24)
    served, root, engine = serve(settings, smollm2_dir)
    try:
        client = openai.OpenAI(base_url=f"{root}/v1", api_key="unused", max_retries=0, timeout=600)
        # SmolLM2's own system prompt (the shop's default one makes the untrained base ramble).
        question = [{"role": "system", "content": "You are a helpful AI assistant named SmolLM, trained by Hugging Face"},
                    {"role": "user", "content": "What is the capital of France?"}]  # fmt: skip
        whole = client.chat.completions.create(model="cl", messages=question)
        assert "Paris" in whole.choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="base", messages=question, stream=True) if c.choices)  # fmt: skip
        assert streamed == whole.choices[0].message.content  # nothing deployed: cl is the base
        assert engine.store.count_interactions() == 2
        page = httpx.get(f"{root}/", timeout=60)
        assert page.status_code == 200 and "gradio" in page.text.lower()  # the page, from the same port
    finally:
        served.close()
