"""One server process for the chat: the Gradio page at `/` and the OpenAI-compatible API at
`/v1`, on the same host, port and `ChatEngine`, served by uvicorn.

The API is a FastAPI app of its own (`cl_chat.api`), mounted before Gradio so that every `/v1`
path is answered by it (its guard, its error shape), never by Gradio's catch-all mount at `/`.
`CL_CHAT_AUTH` protects the page as before (Gradio's login); `CL_API_KEY` protects `/v1`.
"""

from __future__ import annotations

import logging
import sys
import threading
import time

import gradio as gr
import uvicorn
from fastapi import FastAPI

from cl_assets.settings import Settings
from cl_chat.api import api_key, build_api, is_loopback
from cl_chat.app import build_app, parse_auth
from cl_chat.engine import ChatEngine

log = logging.getLogger(__name__)

START_TIMEOUT_S = 60
# The generation thread runs hundreds of short torch ops a step, taking the GIL back after
# each; request threads (tokenizing, streaming chunks) hold it up to the switch interval
# (5 ms by default) meanwhile. 0.5 ms: at 8 concurrent API clients the median time to first
# token went from 2.65 to 0.74 s and the aggregate tokens/s up 12 % (bench/chat.py's setup).
GIL_SWITCH_INTERVAL_S = 0.0005
SHUTDOWN_GRACE_S = 3  # open event streams (the page's queue, a long answer) are cut after this


def build_server(engine: ChatEngine, settings: Settings, host: str, port: int) -> tuple[FastAPI, gr.Blocks]:
    """The combined ASGI app and the Gradio Blocks inside it."""
    root = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    root.mount("/v1", build_api(engine, settings))
    demo = build_app(engine)
    demo.queue()
    gr.mount_gradio_app(root, demo, path="/", auth=parse_auth(settings), show_error=True, ssr_mode=False,
                        server_name=host, server_port=port)  # fmt: skip
    return root, demo


class Served:
    """A server started with `block=False`; `close()` stops it and waits for its thread."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, demo: gr.Blocks, url: str) -> None:
        self.server, self.thread, self.demo, self.url = server, thread, demo, url

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=SHUTDOWN_GRACE_S + 30)


def launch(
    engine: ChatEngine, settings: Settings, host: str | None = None, port: int | None = None, *, block: bool = True
) -> Served | None:
    """Serve the page and the API on `host:port` (default CL_CHAT_HOST, 127.0.0.1, and CL_CHAT_PORT).

    `block=True` runs until SIGINT/SIGTERM; `block=False` returns once the server accepts
    connections (tests, scripts) and `.close()` on the result stops it.
    """
    host = host or settings.chat_host
    port = port or settings.chat_port
    if api_key(settings) is None and not is_loopback((host, port)):
        log.warning("The chat listens on %s but CL_API_KEY is unset: /v1 answers loopback clients only.", host)
    app, demo = build_server(engine, settings, host, port)
    sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
                            lifespan="on")  # fmt: skip
    server = uvicorn.Server(config)
    url = f"http://{host}:{port}/"
    if block:
        server.run()
        return None
    thread = threading.Thread(target=server.run, name="cl-chat-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + START_TIMEOUT_S
    while not server.started:  # uvicorn offers no start event; it sets this once it listens
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"The chat server did not start on {host}:{port} (port in use? see the log).")
        time.sleep(0.05)
    return Served(server, thread, demo, url)
