"""Entry point of `cl chat [--web] [--host H] [--port P]` (wired in `cl_assets.cli`).

Heavy imports (torch, transformers, gradio) happen inside, so `cl --help` stays fast.
"""

from __future__ import annotations

from cl_assets.settings import Settings
from cl_chat.errors import Refused, user_errors


def run_chat(settings: Settings, web: bool = False, host: str | None = None, port: int | None = None) -> None:
    """Chat in the terminal, or with `web` serve the Gradio app and the `/v1` API on host:port
    (default 127.0.0.1:7860).

    Problems a user must fix (no model, wrong salt, bad CL_CHAT_AUTH or CL_API_KEY) end the program with a
    one-line `error: …` and exit code 1 instead of a traceback.
    """
    with user_errors():
        if web:
            from cl_chat.api import api_key
            from cl_chat.app import parse_auth
            from cl_chat.engine import ChatEngine
            from cl_chat.server import launch

            try:  # fail before spending seconds on the model
                parse_auth(settings)
                api_key(settings)
            except ValueError as exc:
                raise Refused(str(exc)) from None
            engine = ChatEngine(settings)
            url = f"http://{host or settings.chat_host}:{port or settings.chat_port}/"
            print(f"CL chat on {url} · OpenAI-compatible API on {url}v1 (Ctrl-C stops both)", flush=True)
            launch(engine, settings, host, port)
        else:
            from cl_chat.terminal import run_terminal

            run_terminal(settings)
