"""The terminal chat: stream an answer, then ask `helpful? [y/n/Enter]`.

`cl chat` (or `python -m cl_chat.terminal`). Plain stdin/stdout, so it also works over ssh
and in a pseudo-terminal. `/reset` clears the history, `/quit` (or Ctrl-D) exits, Ctrl-C
stops an answer.
"""

from __future__ import annotations

import sys
from typing import TextIO

from cl_assets.core.model import PromptTooLongError
from cl_assets.settings import Settings
from cl_chat.engine import BASE_LABEL, ChatEngine, ChatError

PROMPT = "you> "
ANSWER = "bot> "
RATE = "helpful? [y/n/Enter] "
HELP = "/reset clears the history · /quit exits · after each answer: y = helpful, n = not, Enter = skip"


def describe(engine: ChatEngine, version: str | None = None) -> str:
    version = version or engine.adapter_version
    if version == BASE_LABEL and engine.adapter_version != BASE_LABEL:
        return f"the base model {engine.model_version} (outside the scope of adapter {engine.adapter_version})"
    if version == BASE_LABEL:
        return f"the base model {engine.model_version} (no adapter deployed)"
    return f"adapter {version} on {engine.model_version}"


def _read(prompt: str, stdin: TextIO, stdout: TextIO) -> str | None:
    """One line without its newline; None at end of input."""
    stdout.write(prompt)
    stdout.flush()
    line = stdin.readline()
    return None if line == "" else line.rstrip("\r\n")


def chat_loop(engine: ChatEngine, user_id: str | None, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Talk until /quit or end of input."""

    def say(text: str = "") -> None:
        stdout.write(text + "\n")
        stdout.flush()

    session = engine.new_session(user_id=user_id)
    say(f"CL chat · answering with {describe(engine)}")
    say(HELP)
    serving = engine.adapter_version
    while True:
        try:
            message = _read(PROMPT, stdin, stdout)
        except KeyboardInterrupt:
            say()
            return
        if message is None or message.strip() == "/quit":
            return
        if message.strip() == "/reset":
            session.reset()
            say("(history cleared)")
            continue
        if not message.strip():
            continue
        try:
            turn = engine.ask(session, message)
        except (ChatError, PromptTooLongError) as exc:
            say(f"! {exc}")
            continue
        if turn.adapter_version != serving:
            serving = turn.adapter_version
            say(f"(now answering with {describe(engine, serving)})")
        stdout.write(ANSWER)
        stdout.flush()
        try:
            for delta in turn:
                stdout.write(delta)
                stdout.flush()
        except KeyboardInterrupt:
            turn.cancel()
            say("\n(stopped; not recorded)")
            continue
        say()
        if turn.log_error:
            say(f"! {turn.log_error}")
            continue
        answer = _read(RATE, stdin, stdout)
        if answer is None:
            return
        verdict = answer.strip().lower()
        if verdict in {"y", "yes", "n", "no"} and turn.interaction_id:
            helpful = verdict.startswith("y")
            engine.feedback(turn.interaction_id, helpful)
            say("(recorded 👍)" if helpful else "(recorded 👎)")


def run_terminal(settings: Settings, engine: ChatEngine | None = None) -> None:
    """Load the model (unless an engine is given) and chat on stdin/stdout."""
    import getpass

    if engine is None:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # keep the terminal for the conversation
        sys.stderr.write("Loading the model…\n")
        engine = ChatEngine(settings)
    try:
        user = getpass.getuser()
    except Exception:  # noqa: BLE001 - no login name (e.g. a container without passwd entry)
        user = None
    chat_loop(engine, user_id=f"terminal:{user}" if user else None)


def main() -> None:
    from cl_assets.settings import get_settings
    from cl_chat.errors import user_errors

    with user_errors():
        run_terminal(get_settings())


if __name__ == "__main__":
    main()
