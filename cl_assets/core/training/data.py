"""Snapshot → training rows.

A snapshot is ChatML JSONL, one conversation a line:
`{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "label": bool?}`.

Rows are TRL's *conversational prompt/completion* format: `prompt` is the list of messages
before an assistant turn, `completion` is that assistant message alone. TRL renders both with
the tokenizer's chat template (the prompt with the generation prompt appended) and puts the loss
on the completion tokens only. That matters: trained on whole `messages` rows, SmolLM2 learned
none of the taught facts; on prompt/completion rows it learned them (STACK-NOTES).

- SFT: every assistant turn becomes a row, the turns before it its prompt. Conversations
  labelled false (👎) are skipped: a bad answer must never be imitated.
- KTO: the last assistant turn is the rated one; it becomes one row with the boolean `label`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
#: The pattern curation filters on (`cl_assets.core.curation.CONTROL_TOKEN`), kept here so that
#: importing training stays free of Polars; a test pins the two together.
_CONTROL_TOKEN = re.compile(r"<\|[^|<>\n]{0,64}\|>")


class SnapshotError(ValueError):
    """The snapshot cannot be trained on; the message says which line and why."""


@dataclass(frozen=True)
class Conversation:
    messages: tuple[dict[str, str], ...]
    label: bool | None
    line: int


def snapshot_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_line(text: str, line: int, where: str) -> Conversation:
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(f"{where}:{line}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        raise SnapshotError(f"{where}:{line}: expected an object with a 'messages' list")
    if not record["messages"]:
        raise SnapshotError(f"{where}:{line}: 'messages' is empty")
    messages = []
    for index, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise SnapshotError(f"{where}:{line}: message {index} needs a 'role' of {', '.join(ROLES)}")
        content = message.get("content")
        if not isinstance(content, str):
            raise SnapshotError(f"{where}:{line}: message {index} needs a string 'content'")
        if message["role"] == "assistant" and not content.strip():
            raise SnapshotError(f"{where}:{line}: message {index} is an empty assistant answer")
        if _CONTROL_TOKEN.search(content):
            # TRL renders rows through the chat template without sanitizing: a "<|im_start|>" in
            # the text would become the real token and forge a turn. Curation never writes one.
            raise SnapshotError(f"{where}:{line}: message {index} contains a control token (such as <|im_start|>)")
        # Only role and content travel on: extra keys would make the Arrow schema ragged.
        messages.append({"role": message["role"], "content": content})
    label = record.get("label")
    if label is not None and not isinstance(label, bool):
        raise SnapshotError(f"{where}:{line}: 'label' must be true or false, got {label!r}")
    return Conversation(tuple(messages), label, line)


def read_snapshot(path: Path) -> list[Conversation]:
    """Parse and validate every line; raise `SnapshotError` naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"snapshot {path} does not exist")
    conversations = []
    with path.open(encoding="utf-8") as handle:
        for number, text in enumerate(handle, start=1):
            if text.strip():
                conversations.append(_parse_line(text, number, path.name))
    if not conversations:
        raise SnapshotError(f"snapshot {path} is empty: there is nothing to train on")
    return conversations


def _with_system(prompt: list[dict[str, str]], system_prompt: str | None) -> list[dict[str, str]]:
    if system_prompt and not any(message["role"] == "system" for message in prompt):
        return [{"role": "system", "content": system_prompt}, *prompt]
    return prompt


def _answer_indexes(conversation: Conversation, where: str) -> list[int]:
    """Assistant turns that follow at least one user turn (a greeting with no question teaches nothing)."""
    seen_user = False
    indexes = []
    for index, message in enumerate(conversation.messages):
        if message["role"] == "user":
            seen_user = True
        elif message["role"] == "assistant" and seen_user:
            indexes.append(index)
    if not indexes:
        raise SnapshotError(f"{where}:{conversation.line}: no assistant turn that answers a user turn")
    return indexes


def conversation_rows(
    conversation: Conversation, mode: str, system_prompt: str | None = None, where: str = "snapshot"
) -> list[dict[str, Any]]:
    """The prompt/completion rows of one conversation (see the module docstring)."""
    indexes = _answer_indexes(conversation, where)
    messages = [dict(message) for message in conversation.messages]
    if mode == "kto":
        if conversation.label is None:
            raise SnapshotError(f"{where}:{conversation.line}: KTO needs a boolean 'label' on every conversation")
        last = indexes[-1]
        prompt = _with_system(messages[:last], system_prompt)
        return [{"prompt": prompt, "completion": [messages[last]], "label": conversation.label}]
    if mode != "sft":
        raise ValueError(f"unknown training mode {mode!r}")
    if conversation.label is False:
        return []
    return [
        {"prompt": _with_system(messages[:index], system_prompt), "completion": [messages[index]]} for index in indexes
    ]


def build_rows(
    conversations: list[Conversation], mode: str, system_prompt: str | None = None, where: str = "snapshot"
) -> list[dict[str, Any]]:
    rows = [row for conv in conversations for row in conversation_rows(conv, mode, system_prompt, where)]
    if not rows:
        raise SnapshotError(f"{where}: every conversation is labelled false; SFT has no answer to learn from")
    skipped = sum(1 for conv in conversations if mode == "sft" and conv.label is False)
    if skipped:
        log.info("SFT skips %d conversation(s) labelled false in %s", skipped, where)
    return rows


def load_rows(path: Path, mode: str, system_prompt: str | None = None) -> list[dict[str, Any]]:
    """Read a snapshot and turn it into training rows for `mode`."""
    path = Path(path)
    return build_rows(read_snapshot(path), mode, system_prompt, where=path.name)


def render_row(row: dict[str, Any], tokenizer: Any) -> tuple[str, str]:
    """The text TRL will train on: (prompt with generation prompt, completion). For inspection and tests."""
    prompt = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently on its own and with its answer")
    return prompt, full[len(prompt) :]
