"""Snapshot → training rows.

A snapshot is ChatML JSONL, one conversation a line:
`{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...], "label": bool?}`.

Rows are TRL's *conversational prompt/completion* format: `prompt` is the list of messages
before an assistant turn, `completion` is that assistant message alone. TRL renders both with
the tokenizer's chat template (the prompt with the generation prompt appended) and puts the loss
on the completion tokens only. That matters: trained on whole `messages` rows, SmolLM2 learned
none of the taught facts; on prompt/completion rows it learned them (STACK-NOTES).

- SFT: every assistant turn becomes a row, the turns before it its prompt, except turns with
  `"weight": 0` (context only: an earlier answer that was rated down, or that the snapshot
  teaches in its own line). So the loss falls exactly on the answers that count, through TRL's
  own completion mask. Conversations labelled false (👎) are skipped: a bad answer must never
  be imitated.
- KTO: the last assistant turn is the rated one; it becomes one row with the boolean `label`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from cl_assets.core.snapshot import Conversation, iter_lines, parse_line

log = logging.getLogger(__name__)


class SnapshotError(ValueError):
    """The snapshot cannot be trained on; the message says which line and why."""


def read_snapshot(path: Path) -> list[Conversation]:
    """Parse and validate every line; raise `SnapshotError` naming the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise SnapshotError(f"snapshot {path} does not exist")
    conversations = []
    for number, text in iter_lines(path):
        if not text.strip():
            continue
        conversation, problems = parse_line(text, number)
        if problems or conversation is None:
            raise SnapshotError(f"{path.name}:{number}: {problems[0].detail}")
        conversations.append(conversation)
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
        {"prompt": _with_system(messages[:index], system_prompt), "completion": [messages[index]]}
        for index in indexes
        if index not in conversation.untrained
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
