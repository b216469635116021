"""Entry point of `cl chat [--web] [--host H] [--port P]` (wired in `cl_assets.cli`).

Heavy imports (torch, transformers, gradio) happen inside, so `cl --help` stays fast.
"""

from __future__ import annotations

from cl_assets.settings import Settings
from cl_chat.errors import Refused, user_errors


def run_chat(settings: Settings, web: bool = False, host: str | None = None, port: int | None = None) -> None:
    """Chat in the terminal, or with `web` serve the Gradio app on host:port (default 127.0.0.1:7860).

    Problems a user must fix (no model, wrong salt, bad CL_CHAT_AUTH) end the program with a
    one-line `error: …` and exit code 1 instead of a traceback.
    """
    with user_errors():
        if web:
            from cl_chat.app import launch, parse_auth
            from cl_chat.engine import ChatEngine

            try:
                parse_auth(settings)  # fail before spending seconds on the model
            except ValueError as exc:
                raise Refused(str(exc)) from None
            launch(ChatEngine(settings), settings, host, port)
        else:
            from cl_chat.terminal import run_terminal

            run_terminal(settings)
