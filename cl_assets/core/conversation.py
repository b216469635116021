"""Conversations: the three import shapes, their rules, and the ids of stored messages.

One home for what a conversation may look like when it enters CL (the importer and the chat)
and when it leaves it (`cl export snapshot`). Standard library only.

- flat: `{"prompt": ..., "response": ...}` (a single turn);
- OpenAI chat / fine-tuning: `{"messages": [{"role": ..., "content": ..., "weight": 0|1?}, ...]}`;
- ShareGPT (LLaMA-Factory, axolotl): `{"conversations": [{"from": "human"|"gpt"|"system", "value": ...}]}`.

A conversation is rated on its last message, which must be the assistant's: the messages
before it are its context, the last user message its prompt.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cl_assets.core.snapshot import CONTROL_TOKEN

_CONTROL = re.compile(CONTROL_TOKEN)
SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}
TO_SHAREGPT = {"system": "system", "user": "human", "assistant": "gpt"}


class ConversationError(ValueError):
    """A conversation CL cannot store; the message names positions and rules, never text."""


@dataclass(frozen=True)
class ParsedConversation:
    """A conversation split at its rated answer. `context` holds the messages before the
    prompt (system prompt and earlier turns) as {"role", "content", "weight"?} dicts."""

    context: list[dict[str, Any]]
    prompt: str
    response: str


def message_id(parent_id: str | None, user_hash: str | None, role: str, content: str) -> str:
    """The stored id of a message: identical prefixes of one user's conversations share rows,
    a retry is a sibling, and different users never share a message (erasure stays per user)."""
    canonical = json.dumps([parent_id, user_hash, role, content], separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def from_openai(messages: Any) -> list[dict[str, Any]]:
    """`messages` of an OpenAI line as {"role", "content", "weight"?} dicts, or ConversationError."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("'messages' must be a non-empty list")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise ConversationError(f"message {index} is not an object")
        role, content = message.get("role"), message.get("content")
        if role not in ("system", "user", "assistant"):
            raise ConversationError(f"message {index} has role {role!r}; only system, user and assistant are stored")
        if not isinstance(content, str):
            raise ConversationError(f"message {index} needs a string 'content'")
        item: dict[str, Any] = {"role": role, "content": content}
        if "weight" in message and message["weight"] is not None:
            weight = message["weight"]
            if role != "assistant" or weight not in (0, 1) or isinstance(weight, bool):
                raise ConversationError(f"message {index}: 'weight' is 0 or 1, and only on assistant messages")
            item["weight"] = int(weight)
        out.append(item)
    return out


def from_sharegpt(conversations: Any) -> list[dict[str, Any]]:
    """`conversations` of a ShareGPT line as {"role", "content"} dicts, or ConversationError."""
    if not isinstance(conversations, list) or not conversations:
        raise ConversationError("'conversations' must be a non-empty list")
    out = []
    for index, message in enumerate(conversations):
        if not isinstance(message, dict):
            raise ConversationError(f"conversations[{index}] is not an object")
        speaker, value = message.get("from"), message.get("value")
        if speaker not in SHAREGPT_ROLES:
            raise ConversationError(f"conversations[{index}] has 'from' {speaker!r}; expected human, gpt or system")
        if not isinstance(value, str):
            raise ConversationError(f"conversations[{index}] needs a string 'value'")
        out.append({"role": SHAREGPT_ROLES[speaker], "content": value})
    return out


def check_roles(messages: list[dict[str, Any]], *, last: str) -> None:
    """System messages first, then user and assistant alternating from the user, ending with
    `last`: "assistant" for a rated conversation, "user" for one still to be answered (the API)."""
    first = 0
    while first < len(messages) and messages[first]["role"] == "system":
        first += 1
    turns = messages[first:]
    if not any(m["role"] == "user" for m in turns):
        raise ConversationError("no user message")
    for offset, message in enumerate(turns):
        expected = "user" if offset % 2 == 0 else "assistant"
        if message["role"] != expected:
            raise ConversationError(
                f"message {first + offset} is {message['role']!r} where {expected!r} was expected "
                "(system messages first, then user and assistant alternating)"
            )
    if turns[-1]["role"] != last:
        what = "the assistant's answer (the one the rating is about)" if last == "assistant" else "the user's (the one to answer)"
        raise ConversationError(f"the last message must be {what}")


def split_conversation(messages: list[dict[str, Any]], max_messages: int) -> ParsedConversation:
    """Check the order of the roles and split at the rated answer (the last message).

    System messages come first; then user and assistant alternate, starting with the user and
    ending with the assistant. Control tokens (`<|im_start|>`, ...) are refused anywhere: once
    rendered through a chat template they would forge a turn.
    """
    if len(messages) > max_messages:
        raise ConversationError(f"{len(messages)} messages, over the limit of {max_messages} (CL_MAX_CONVERSATION_MESSAGES)")
    for index, message in enumerate(messages):
        if _CONTROL.search(message["content"]):
            raise ConversationError(f"message {index} contains a control token (such as <|im_start|>)")
    check_roles(messages, last="assistant")
    answer = messages[-1]
    if answer.get("weight") == 0:
        raise ConversationError("the rated answer (the last message) has weight 0: there is nothing to learn from it")
    if not answer["content"].strip():
        raise ConversationError("the answer (the last message) is empty")
    context = [dict(m) for m in messages[: len(messages) - 2]]
    return ParsedConversation(context=context, prompt=messages[-2]["content"], response=answer["content"])


def to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """A snapshot line (`{"messages": [...], "label"?}`) in ShareGPT's shape.

    ShareGPT has no per-message weight. Leaving a weight-0 turn out would change the
    conversation, so it is kept, and `weights` lists each gpt turn's weight (present only
    when one is 0) for a reader that can honour it."""
    out: dict[str, Any] = {
        "conversations": [{"from": TO_SHAREGPT[m["role"]], "value": m["content"]} for m in record["messages"]]
    }
    weights = [m.get("weight", 1) for m in record["messages"] if m["role"] == "assistant"]
    if any(w == 0 for w in weights):
        out["weights"] = weights
    if "label" in record:
        out["label"] = record["label"]
    return out


__all__ = [
    "SHAREGPT_ROLES",
    "TO_SHAREGPT",
    "ConversationError",
    "ParsedConversation",
    "check_roles",
    "from_openai",
    "from_sharegpt",
    "message_id",
    "split_conversation",
    "to_sharegpt",
]
