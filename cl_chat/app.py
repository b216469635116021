"""The web chat: a Gradio app around a `ChatEngine`.

Tab "Chat": streamed answers, 👍/👎 on every answer, retry (recorded as implicit negative
feedback on the replaced answer) and a badge naming the adapter that answers. Tab "Metrics":
helpful rate per adapter version, latency and tokens/s over time, and the registry.

All logic lives in the engine and in `cl_assets.core`; this module maps UI events onto them.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from cl_assets.core.model import PromptTooLongError
from cl_assets.core.monitoring import write_quality_metrics
from cl_assets.core.store import UnknownInteractionError
from cl_assets.settings import Settings
from cl_chat.engine import BASE_LABEL, ChatEngine, ChatError, ChatSession, Turn

log = logging.getLogger(__name__)

BADGE_REFRESH_S = 15  # how often an open page re-reads which adapter serves
REGISTRY_COLUMNS = ["deployed", "snapshot", "rows", "accuracy", "general_accuracy", "gate_passed", "gate_reason", "mode", "parent", "tainted"]
SUMMARY_COLUMNS = ["adapter", "interactions", "rated", "helpful", "helpful_rate", "regenerated", "latency_p50_ms", "tokens_per_s_p50"]

History = list[dict[str, Any]]


def badge(engine: ChatEngine, adapter_version: str | None = None) -> str:
    """Markdown naming what answers: the adapter that gave the last answer, else the serving one."""
    version = adapter_version or engine.adapter_version
    if version == BASE_LABEL and engine.adapter_version != BASE_LABEL:
        text = (f"Answering: **base model** `{engine.model_version}` (the question is outside the scope of "
                f"adapter `{engine.adapter_version}`)")
    elif version == BASE_LABEL:
        text = f"Answering: **base model** `{engine.model_version}` (no adapter deployed)"
    else:
        text = f"Answering: adapter **`{version}`** on `{engine.model_version}`"
    if engine.swap_error:
        # The detail (paths, hashes) is in the server log; a chat user only needs to know.
        text += " · ⚠️ the newest deployment was refused (see the server log)"
    return text


def _session(engine: ChatEngine, session: ChatSession | None, request: gr.Request | None) -> ChatSession:
    if session is not None:
        return session
    session_hash = getattr(request, "session_hash", None)
    username = getattr(request, "username", None)
    # Without auth there is no stable person behind a page: the browser session stands in.
    user_id = username or (f"web:{session_hash}" if session_hash else None)
    return engine.new_session(session_id=session_hash, user_id=user_id)


def _stream(turn: Turn, history: History) -> Iterator[History]:
    answer = {"role": "assistant", "content": ""}
    history = [*history, answer]
    for delta in turn:
        answer["content"] += delta
        yield history
    yield history  # also when the answer is empty: every question keeps its answer slot
    if turn.log_error:
        gr.Warning(turn.log_error)


def _with_ratings(history: History, session: ChatSession) -> gr.Chatbot:
    """The chat with each answer's 👍/👎 shown as given (a plain value update would clear them)."""
    labels = {True: "Like", False: "Dislike", None: None}
    return gr.Chatbot(value=history, feedback_value=[labels[e.helpful] for e in session.exchanges])


def build_app(engine: ChatEngine) -> gr.Blocks:
    """The Blocks app; `cl_chat.server.launch` serves it (with the API beside it)."""
    metrics_lock = threading.Lock()  # write_quality_metrics rewrites the same PNG files

    def respond(message: str, history: History, session: ChatSession | None, request: gr.Request):
        session = _session(engine, session, request)
        try:
            turn = engine.ask(session, message)
        except (ChatError, PromptTooLongError) as exc:
            # A toast, and the message stays in the box to be shortened; the chat is untouched.
            gr.Warning(str(exc))
            yield gr.skip(), gr.skip(), session, gr.skip()
            return
        history = [*(history or []), {"role": "user", "content": message}]
        yield "", history, session, badge(engine, turn.adapter_version)
        shown = history
        for shown in _stream(turn, history):
            yield "", shown, session, gr.skip()
        yield "", _with_ratings(shown, session), session, badge(engine, turn.adapter_version)

    def retry(data: gr.RetryData, history: History, session: ChatSession | None, request: gr.Request):
        session = _session(engine, session, request)
        exchange = data.index // 2 if isinstance(data.index, int) else -1
        try:
            turn = engine.regenerate(session, exchange)
        except (ChatError, PromptTooLongError) as exc:
            gr.Warning(str(exc))
            yield gr.skip(), session, gr.skip()
            return
        history = [*history[: 2 * exchange], {"role": "user", "content": turn.prompt}]
        yield history, session, badge(engine, turn.adapter_version)
        shown = history
        for shown in _stream(turn, history):
            yield shown, session, gr.skip()
        yield _with_ratings(shown, session), session, badge(engine, turn.adapter_version)

    def like(data: gr.LikeData, session: ChatSession | None) -> None:
        index = data.index if isinstance(data.index, int) else -1
        if session is None or index % 2 != 1:
            gr.Warning("Wait for the answer to finish, then rate it.")
            return
        helpful = data.liked if isinstance(data.liked, bool) else None  # "" = rating taken back
        try:
            engine.rate(session, index // 2, helpful)
        except ChatError as exc:
            gr.Warning(str(exc))
        except UnknownInteractionError:
            gr.Warning("This answer is no longer stored (erased?); the rating was not recorded.")

    def clear(session: ChatSession | None) -> ChatSession | None:
        if session is not None:
            session.reset()
        return session

    def follow_registry() -> str:
        engine.refresh()
        return badge(engine)

    def metrics() -> tuple[str, Any, Any, pd.DataFrame, pd.DataFrame]:
        registry_rows = [{k: row[k] for k in REGISTRY_COLUMNS} for row in engine.registry.describe()]
        registry = pd.DataFrame(registry_rows, columns=REGISTRY_COLUMNS)
        deployed = engine.registry.current().adapter_id or f"none (base model `{engine.model_version}`)"
        if engine.store.count_interactions() == 0:
            empty = pd.DataFrame(columns=SUMMARY_COLUMNS)
            return f"Deployed adapter: **{deployed}** · no interactions yet.", None, None, empty, registry
        try:
            with metrics_lock:
                summary, plots = write_quality_metrics(engine.settings, engine.store)
                images = [Image.open(plots[name]).copy() for name in ("helpful_rate", "latency")]
        except Exception as exc:  # noqa: BLE001 - the tab says what failed; the chat keeps working
            log.exception("Quality metrics failed")
            text = f"Deployed adapter: **{deployed}** · metrics could not be computed ({type(exc).__name__}; see the server log)."
            return text, None, None, pd.DataFrame(columns=SUMMARY_COLUMNS), registry
        rows = [{k: row.get(k) for k in SUMMARY_COLUMNS} for row in summary["per_adapter"]]
        per_adapter = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
        per_adapter = per_adapter.round({"helpful_rate": 3, "latency_p50_ms": 1, "tokens_per_s_p50": 1})
        text = f"Deployed adapter: **{deployed}** · {summary['total']} interactions."
        return text, images[0], images[1], per_adapter, registry

    with gr.Blocks(title="CL chat", analytics_enabled=False) as demo:
        session = gr.State(None)
        with gr.Tab("Chat"):
            badge_md = gr.Markdown(badge(engine), elem_id="adapter-badge")
            chatbot = gr.Chatbot(
                label="CL",
                height=520,
                feedback_options=("Like", "Dislike"),
                placeholder="Ask a question; rate each answer with 👍 / 👎 so the model can learn.",
                buttons=["copy"],
            )
            with gr.Row():
                box = gr.Textbox(
                    placeholder="Type a message and press Enter", show_label=False, scale=8, autofocus=True, max_lines=6
                )
                send = gr.Button("Send", variant="primary", scale=1, min_width=80)
        with gr.Tab("Metrics") as metrics_tab:
            refresh = gr.Button("Refresh")
            summary_md = gr.Markdown()
            with gr.Row():
                image = {"type": "pil", "format": "png", "interactive": False, "show_label": False}
                helpful_img = gr.Image(label="Helpful rate per adapter version", scale=2, elem_id="helpful-rate-plot", **image)
                latency_img = gr.Image(label="Latency and tokens/s per day", scale=3, elem_id="latency-plot", **image)
            per_adapter_df = gr.Dataframe(label="Per adapter version", interactive=False)
            registry_df = gr.Dataframe(label="Registry", interactive=False)

        for trigger in (box.submit, send.click):
            trigger(respond, [box, chatbot, session], [box, chatbot, session, badge_md], show_progress="minimal")
        chatbot.retry(retry, [chatbot, session], [chatbot, session, badge_md], show_progress="minimal")
        chatbot.like(like, [session], None)
        chatbot.clear(clear, [session], [session])
        gr.Timer(BADGE_REFRESH_S).tick(follow_registry, None, badge_md, show_progress="hidden")
        metric_outputs = [summary_md, helpful_img, latency_img, per_adapter_df, registry_df]
        refresh.click(metrics, None, metric_outputs)
        metrics_tab.select(metrics, None, metric_outputs)
    return demo


def parse_auth(settings: Settings) -> tuple[str, str] | None:
    """`CL_CHAT_AUTH=user:password` as Gradio's auth pair (None: no login)."""
    if settings.chat_auth is None:
        return None
    user, sep, password = settings.chat_auth.get_secret_value().partition(":")
    if not sep or not user or not password:
        raise ValueError("CL_CHAT_AUTH must look like `user:password` (both non-empty).")
    return user, password

