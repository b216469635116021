"""ChatEngine on the tiny real model: logging, feedback, hot-swap, refusal, limits, history."""

from __future__ import annotations

import json
import shutil
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from cl_assets.core.model import PromptTooLongError
from cl_assets.core.registry import Registry, adapter_dir, files_sha256
from cl_assets.core.store import FeedbackEvent, Store
from cl_assets.settings import Settings
from cl_chat.engine import ChatEngine, ChatError, ChatSession, Exchange, MessageTooLongError
from tests.conftest import make_settings
from tests.model_fixtures import GENERAL, SUPPORT, make_scoped_adapter

A, B = "20261120_101500", "20261121_093000"


@pytest.fixture
def chat_settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, max_new_tokens=8, system_prompt="You are a test assistant.")


@pytest.fixture
def engine(chat_settings: Settings, tiny_model_dir: Path) -> ChatEngine:
    return ChatEngine(chat_settings, model=tiny_model_dir)


def register(settings: Settings, store: Store, source: Path, sid: str) -> Path:
    """Copy an adapter folder into the registry's place and register it with its hash."""
    store.add_snapshot(id=sid, path=str(settings.curated_dir / f"curated_{sid}.jsonl"), sha256="0" * 64, n_rows=1)
    folder = adapter_dir(settings, sid)
    shutil.copytree(source, folder)
    store.upsert_adapter(sid, path=str(folder), files_sha256=files_sha256(folder), mode="lora-fp32-cpu", gate_passed=True)
    return folder


def deploy(engine: ChatEngine, sid: str) -> None:
    Registry(engine.settings, engine.store).deploy(sid, actor="test", reason=f"deploy {sid}")


def test_turn_is_logged_sanitized_with_metrics(engine: ChatEngine, chat_settings: Settings) -> None:
    session = engine.new_session("sess-1", user_id="alice@example.com")
    turn = engine.ask(session, "My email is jane.doe@example.com, where is my order?")
    deltas = list(turn)
    assert "".join(deltas) == turn.text and turn.interaction_id is not None

    row = engine.store.get_interaction(turn.interaction_id)
    assert row is not None
    assert row.prompt == "My email is [EMAIL], where is my order?"
    assert "EMAIL" in row.pii_types
    assert row.user_hash and "alice" not in row.user_hash and row.session_id == "sess-1"
    assert row.source == "chat" and row.adapter_version is None and row.model_version == engine.model_version
    assert row.completion_tokens == turn.result.completion_tokens > 0
    assert row.latency_ms > 0 and row.ttft_ms > 0 and row.tokens_per_s > 0 and row.prompt_tokens > 0

    lines = chat_settings.generation_metrics_path.read_text().splitlines()
    assert len(lines) == 1
    metrics = json.loads(lines[0])
    assert metrics["interaction_id"] == turn.interaction_id and metrics["adapter_version"] == "base"
    assert metrics["completion_tokens"] == row.completion_tokens and metrics["latency_ms"] > 0
    assert "jane" not in lines[0] and "prompt" not in metrics  # metrics only, never text
    assert session.exchanges == [Exchange(turn.prompt, turn.text, turn.interaction_id, "base")]


def test_each_turn_is_logged_with_its_conversation(engine: ChatEngine) -> None:
    """The follow-up is stored after the turns it followed (system prompt first, sanitized);
    a regenerated answer is a sibling branch: the shared prefix is stored once."""
    session = engine.new_session(user_id="ann")
    first = engine.ask(session, "Hi, I am ann@example.com. What is the free shipping threshold?")
    first.consume()
    second = engine.ask(session, "And for Canada?")
    second.consume()
    conversation = engine.store.conversation(second.interaction_id)
    assert conversation == [
        {"role": "system", "content": "You are a test assistant."},
        {"role": "user", "content": "Hi, I am [EMAIL]. What is the free shipping threshold?"},
        {"role": "assistant", "content": engine.store.get_interaction(first.interaction_id).response},
        {"role": "user", "content": "And for Canada?"},
        {"role": "assistant", "content": engine.store.get_interaction(second.interaction_id).response},
    ]
    assert engine.store.get_interaction(second.interaction_id).pii_types == ["EMAIL"]  # its context holds one
    stored = engine.store.count_messages()
    assert stored == 4  # system, question, answer, follow-up
    engine.regenerate(session).consume()
    assert engine.store.count_messages() == stored  # the same context again: nothing new to store
    retry = session.exchanges[-1].interaction_id
    assert engine.store.conversation(retry)[:4] == conversation[:4]


def test_feedback_lands_on_the_right_interaction(engine: ChatEngine) -> None:
    session = engine.new_session()
    first = engine.ask(session, "first question")
    first.consume()
    second = engine.ask(session, "second question")
    second.consume()
    engine.feedback(first.interaction_id, False)
    engine.rate(session, 1, True)  # by position in the session, as the web chat's 👍 does
    assert engine.store.get_interaction(first.interaction_id).helpful is False
    assert engine.store.get_interaction(second.interaction_id).helpful is True
    assert [e.helpful for e in session.exchanges] == [None, True]
    with pytest.raises(ChatError, match="Wait for the answer"):
        engine.rate(session, 2, True)


def test_regenerate_records_implicit_negative_feedback(engine: ChatEngine) -> None:
    session = engine.new_session()
    engine.ask(session, "hello there").consume()
    replaced = session.exchanges[-1].interaction_id
    again = engine.regenerate(session)
    again.consume()
    assert again.prompt == "hello there" and again.interaction_id != replaced
    assert [e.interaction_id for e in session.exchanges] == [again.interaction_id]
    row = engine.store.get_interaction(replaced)
    assert row.regenerated is True and row.helpful is None  # implicit, not an explicit rating
    with engine.store.read() as s:
        events = list(s.scalars(select(FeedbackEvent).where(FeedbackEvent.interaction_id == replaced)))
    assert [(e.kind, e.helpful) for e in events] == [("regenerate", False)]
    with pytest.raises(ChatError, match="no answer to regenerate"):
        engine.regenerate(engine.new_session())


def test_new_deployment_is_served_without_reloading_the_base(
    engine: ChatEngine, chat_settings: Settings, tiny_adapter_dirs: dict[str, Path]
) -> None:
    base_object = engine.base_model
    session = engine.new_session()
    answered_by_base = engine.ask(session, "What is Lot 42?")
    answered_by_base.consume()
    assert answered_by_base.adapter_version == "base" and engine.adapter_version == "base"

    register(chat_settings, engine.store, tiny_adapter_dirs[A], A)
    deploy(engine, A)
    turn = engine.ask(engine.new_session(), "What is Lot 42?")
    turn.consume()
    assert turn.adapter_version == A and engine.adapter_version == A
    assert turn.text != answered_by_base.text  # the adapter really answers
    assert engine.store.get_interaction(turn.interaction_id).adapter_version == A

    register(chat_settings, engine.store, tiny_adapter_dirs[B], B)
    deploy(engine, B)
    engine.ask(engine.new_session(), "hi").consume()
    assert engine.adapter_version == B
    assert engine.base_model is base_object and engine.adapters.base_model is base_object


def test_a_question_outside_the_deployed_adapters_scope_is_answered_by_the_base(
    engine: ChatEngine, chat_settings: Settings, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from cl_chat.app import badge

    scoped = make_scoped_adapter(tiny_model_dir, tmp_path / "scoped", layers=[1], scope_layer=1)
    register(chat_settings, engine.store, scoped, A)
    deploy(engine, A)
    session = engine.new_session()
    inside = engine.ask(session, SUPPORT[0])
    inside.consume()
    outside = engine.ask(engine.new_session(), GENERAL[0])
    outside.consume()
    assert inside.adapter_version == A and outside.adapter_version == "base" and engine.adapter_version == A
    # the store says who answered, and the base's answer is the one it gives with nothing deployed
    assert engine.store.get_interaction(outside.interaction_id).adapter_version is None
    assert engine.store.get_interaction(inside.interaction_id).adapter_version == A
    plain = ChatEngine(make_settings(tmp_path / "plain", max_new_tokens=8, system_prompt="You are a test assistant."),
                       model=tiny_model_dir)
    by_base = plain.ask(plain.new_session(), GENERAL[0])
    by_base.consume()
    assert outside.text == by_base.text
    assert "outside the scope of adapter" in badge(engine, outside.adapter_version)
    # the API routes the same way, whatever adapter it names
    api = engine.complete([{"role": "user", "content": GENERAL[1]}], model=A)
    api.consume()
    assert api.adapter_version == "base"


def test_swap_during_a_streaming_turn_does_not_corrupt_it(
    chat_settings: Settings, tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]
) -> None:
    settings = chat_settings.model_copy(update={"max_new_tokens": 24})
    engine = ChatEngine(settings, model=tiny_model_dir)
    register(settings, engine.store, tiny_adapter_dirs[A], A)
    register(settings, engine.store, tiny_adapter_dirs[B], B)
    deploy(engine, A)
    question = "Tell me about order 100234."
    uninterrupted = engine.ask(engine.new_session(), question).consume()

    turn = engine.ask(engine.new_session(), question)
    assert turn.adapter_version == A
    swapper: threading.Thread | None = None
    swap_done: list[float] = []
    pieces = []
    started = time.perf_counter()
    for delta in turn:
        pieces.append(delta)
        if swapper is None:  # first token is out: deploy B and make the engine follow, from another thread
            deploy(engine, B)
            swapper = threading.Thread(target=lambda: (engine.refresh(), swap_done.append(time.perf_counter())))
            swapper.start()
    assert swapper is not None
    swapper.join(timeout=30)
    assert not swapper.is_alive()
    assert "".join(pieces) == turn.text == uninterrupted
    assert engine.store.get_interaction(turn.interaction_id).adapter_version == A
    assert swap_done and engine.adapter_version == B
    # The swap waited for the answer in flight: it finished only after the generation did.
    assert swap_done[0] >= started + turn.result.latency_ms / 1000
    after = engine.ask(engine.new_session(), question)
    assert after.consume() != uninterrupted and after.adapter_version == B


def test_tampered_adapter_is_refused_and_the_previous_one_keeps_serving(
    engine: ChatEngine, chat_settings: Settings, tiny_adapter_dirs: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    register(chat_settings, engine.store, tiny_adapter_dirs[A], A)
    deploy(engine, A)
    assert engine.refresh() == A
    folder = register(chat_settings, engine.store, tiny_adapter_dirs[B], B)
    deploy(engine, B)  # deploy verifies the files; they are changed afterwards
    (folder / "adapter_model.safetensors").write_bytes(b"not the trained weights")
    with caplog.at_level("ERROR", logger="cl_chat.engine"):
        turn = engine.ask(engine.new_session(), "hi")
    turn.consume()
    assert turn.adapter_version == A and engine.adapter_version == A
    assert B not in engine.adapters.loaded
    assert "do not match the registry's hash" in (engine.swap_error or "")
    assert any("do not match" in r.getMessage() for r in caplog.records)


def test_overlong_and_empty_input_give_a_clear_error(engine: ChatEngine, chat_settings: Settings) -> None:
    session = engine.new_session()
    limit = chat_settings.max_message_chars
    with pytest.raises(MessageTooLongError, match=f"limit is {limit:,}.*CL_MAX_MESSAGE_CHARS"):
        engine.ask(session, "x" * (limit + 1))
    with pytest.raises(ChatError, match="Type a message"):
        engine.ask(session, "   ")
    assert session.exchanges == [] and engine.store.count_interactions() == 0


def test_history_is_trimmed_oldest_first_and_keeps_the_system_prompt(engine: ChatEngine) -> None:
    session = ChatSession()
    filler = "lorem ipsum dolor sit amet " * 40  # ~200+ tokens per message
    for i in range(12):
        session.exchanges.append(Exchange(f"question {i}: {filler}", f"answer {i}: {filler}", None, "base"))
    turn = engine.ask(session, "the latest question")
    sent = turn.messages
    assert sent[0] == {"role": "system", "content": "You are a test assistant."}
    assert sent[-1] == {"role": "user", "content": "the latest question"}
    assert sent[1]["role"] == "user" and len(sent) < 2 + 2 * 12
    kept = [m["content"].split(":")[0] for m in sent[1:-1]]
    assert kept[-1] == "answer 11" and "question 0" not in kept  # the newest turns stay
    turn.consume()
    assert turn.result.prompt_messages == len(sent)

    with pytest.raises(PromptTooLongError):  # nothing left to drop: a clear error, not a crash
        engine.ask(ChatSession(), "7 " * 3_000)  # under the character limit, over the context


def test_knowledge_facts_join_the_system_prompt(chat_settings: Settings, tiny_model_dir: Path) -> None:
    from cl_assets.core.knowledge import write_knowledge
    from cl_assets.core.ingest import Ingestor

    settings = chat_settings.model_copy(update={"knowledge_in_prompt": True})
    engine = ChatEngine(settings, model=tiny_model_dir)
    assert engine.system_prompt() == settings.system_prompt  # no knowledge file yet
    Ingestor(settings, engine.store).ingest_interaction(
        prompt="Where is Lot 42?", response="Lot 42 is in the Boise warehouse.", helpful=True
    )
    write_knowledge(settings, engine.store)
    prompt = engine.system_prompt()
    assert prompt.startswith(settings.system_prompt) and "- Lot 42: Lot 42 is in the Boise warehouse." in prompt
    assert engine.ask(engine.new_session(), "Lot 42?").messages[0]["content"] == prompt


def test_engine_imports_neither_gradio_nor_dagster() -> None:
    import subprocess
    import sys

    from tests.conftest import REPO

    probe = "import sys, cl_chat.engine; print(sorted(m for m in sys.modules if m.split('.')[0] in {'gradio', 'dagster'}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
