"""The snapshot: its id, its file, its ChatML schema, its validation and its hash.

One home for what curation writes and training, the registry, the sensors, the CLI and the
cycle read, so that none of them keeps a copy that can drift. Standard library only: training
imports it without Polars, sensors without the curation stack.

A snapshot is ChatML JSONL, one conversation a line:
`{"messages": [{"role": "system"|"user"|"assistant", "content": str, "weight": 0|1?}, ...], "label": bool?}`
(OpenAI's chat fine-tuning format: an assistant message with `"weight": 0` is context only,
not trained on; the last message, the answer the line is about, is always trained on);
its id (`YYYYMMDD_HHMMSS`, UTC) names the dataset, the adapter trained on it, its evaluation
and its deployment.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, NewType

if TYPE_CHECKING:
    from cl_assets.settings import Settings

SnapshotId = NewType("SnapshotId", str)

#: `YYYYMMDD_HHMMSS`; always applied with `fullmatch` (`match` with `$` lets a trailing newline in).
SNAPSHOT_ID_PATTERN = r"\d{8}_\d{6}"
_SNAPSHOT_ID = re.compile(SNAPSHOT_ID_PATTERN)

ROLES = ("system", "user", "assistant")
#: Anything shaped like a special token (`<|im_start|>`, `<|endoftext|>`, `<|eot_id|>`, ...):
#: user text holding one could forge a turn once it is rendered through a chat template.
CONTROL_TOKEN = r"<\|[^|<>\n]{0,64}\|>"
_CONTROL = re.compile(CONTROL_TOKEN)
MAX_PROBLEMS = 50


def is_snapshot_id(text: object) -> bool:
    return isinstance(text, str) and _SNAPSHOT_ID.fullmatch(text) is not None


def check_snapshot_id(text: str) -> SnapshotId:
    """`text` as a snapshot id, or ValueError naming the expected shape."""
    if not is_snapshot_id(text):
        raise ValueError(f"snapshot id must look like YYYYMMDD_HHMMSS, not {text!r}")
    return SnapshotId(text)


def new_snapshot_id(now: datetime | None = None) -> SnapshotId:
    """The id for `now` (default: this second), in UTC whatever zone `now` is in."""
    moment = now or datetime.now(UTC)
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return SnapshotId(moment.strftime("%Y%m%d_%H%M%S"))


def snapshot_path(settings: Settings, snapshot_id: str) -> Path:
    return settings.curated_dir / f"curated_{check_snapshot_id(snapshot_id)}.jsonl"


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- schema and validation -------------------------------------------------------------------


class ProblemKind(StrEnum):
    MISSING = "missing"  # no file
    ENCODING = "encoding"  # not UTF-8
    JSON = "json"
    SCHEMA = "schema"  # not a ChatML conversation as CL writes it
    TURNS = "turns"  # roles in an order nothing can learn from
    CONTROL_TOKEN = "control_token"
    PII = "pii"
    MORE = "more"  # how many problems were left out of the list


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a snapshot. The detail names line, message and PII types, never text."""

    kind: ProblemKind
    detail: str
    line: int | None = None

    def __str__(self) -> str:
        return self.detail if self.line is None else f"line {self.line}: {self.detail}"


@dataclass(frozen=True)
class Conversation:
    """One parsed snapshot line: only role and content of each message travel on."""

    messages: tuple[dict[str, str], ...]
    label: bool | None
    line: int
    untrained: frozenset[int] = frozenset()  # indexes of assistant messages with weight 0


def parse_line(text: str, line: int) -> tuple[Conversation | None, list[Problem]]:
    """A line as a conversation, and what breaks the schema in it.

    The conversation (None when the line is not even an object with messages) holds the
    well-formed messages, so that a validator can still look for PII in a malformed line; a
    reader that trains on it must refuse the line when there is any problem.
    Control tokens are refused for every reader: TRL renders rows through the chat template
    without sanitizing, so a "<|im_start|>" in the text would become the real token and forge
    a turn. Curation never writes one.
    """

    def fail(kind: ProblemKind, detail: str) -> tuple[None, list[Problem]]:
        return None, [Problem(kind, detail, line)]

    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return fail(ProblemKind.JSON, f"not valid JSON ({exc.msg} at column {exc.colno})")
    if not isinstance(record, dict) or not isinstance(record.get("messages"), list):
        return fail(ProblemKind.SCHEMA, "expected an object with a 'messages' list")
    if not record["messages"]:
        return fail(ProblemKind.SCHEMA, "'messages' is empty")
    problems: list[Problem] = []
    label = record.get("label")
    if label is not None and not isinstance(label, bool):
        problems.append(Problem(ProblemKind.SCHEMA, "'label' must be true or false", line))
        label = None
    messages = []
    untrained = set()
    for index, message in enumerate(record["messages"]):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            problems.append(Problem(ProblemKind.SCHEMA, f"message {index} needs a 'role' of {', '.join(ROLES)}", line))
            continue
        content = message.get("content")
        if not isinstance(content, str):
            problems.append(Problem(ProblemKind.SCHEMA, f"message {index} needs a string 'content'", line))
            continue
        if message["role"] == "assistant" and not content.strip():
            problems.append(Problem(ProblemKind.SCHEMA, f"message {index} is an empty assistant answer", line))
        if _CONTROL.search(content):
            detail = f"message {index} contains a control token (such as <|im_start|>)"
            problems.append(Problem(ProblemKind.CONTROL_TOKEN, detail, line))
        weight = message.get("weight")
        if weight is not None:
            if message["role"] != "assistant" or isinstance(weight, bool) or weight not in (0, 1):
                problems.append(Problem(ProblemKind.SCHEMA, f"message {index}: 'weight' is 0 or 1, on assistant messages", line))
            elif weight == 0:
                untrained.add(len(messages))
        # Only role and content travel on: extra keys would make an Arrow schema ragged.
        messages.append({"role": message["role"], "content": content})
    return Conversation(tuple(messages), label, line, frozenset(untrained)), problems


def turn_problems(conversation: Conversation) -> list[Problem]:
    """What CL writes: at least one user and one assistant message, the assistant's last."""
    roles = [message["role"] for message in conversation.messages]
    if "user" not in roles or "assistant" not in roles:
        return [Problem(ProblemKind.TURNS, "needs at least one user and one assistant message", conversation.line)]
    if roles[-1] != "assistant":
        return [Problem(ProblemKind.TURNS, "the last message must be the assistant's", conversation.line)]
    if len(roles) - 1 in conversation.untrained:
        return [Problem(ProblemKind.TURNS, "the last answer has weight 0: the line teaches nothing", conversation.line)]
    return []


def pii_problems(conversation: Conversation, pii_types: Callable[[str], Collection[str]]) -> list[Problem]:
    found = []
    for index, message in enumerate(conversation.messages):
        types = sorted(set(pii_types(message["content"])))
        if types:
            found.append(Problem(ProblemKind.PII, f"message {index} contains PII ({', '.join(types)})", conversation.line))
    return found


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of every line; UnicodeDecodeError on bytes that are not UTF-8."""
    with Path(path).open("r", encoding="utf-8", errors="strict") as fh:
        yield from enumerate(fh, start=1)


def validate_snapshot(path: Path, pii_types: Callable[[str], Collection[str]] | None = None) -> list[Problem]:
    """Every problem with a snapshot file (the first MAX_PROBLEMS, then a count of the rest).

    `pii_types` maps a text to the PII types found in it (default: CL's sanitizer).
    """
    if pii_types is None:
        from cl_assets.core.pii import find_pii

        def pii_types(text: str) -> Collection[str]:
            return {finding.type for finding in find_pii(text)}

    path = Path(path)
    if not path.is_file():
        return [Problem(ProblemKind.MISSING, f"{path} does not exist")]
    problems: list[Problem] = []
    extra = 0

    def add(found: list[Problem]) -> None:
        nonlocal extra
        for problem in found:
            if len(problems) < MAX_PROBLEMS:
                problems.append(problem)
            else:
                extra += 1

    try:
        for number, text in iter_lines(path):
            conversation, found = parse_line(text, number)
            if conversation is not None:
                found += turn_problems(conversation) + pii_problems(conversation, pii_types)
            add(found)
    except UnicodeDecodeError as exc:
        add([Problem(ProblemKind.ENCODING, f"not valid UTF-8 (byte {exc.start} of a block)")])
    if extra:
        problems.append(Problem(ProblemKind.MORE, f"... and {extra} more problem(s)"))
    return problems


__all__ = [
    "CONTROL_TOKEN",
    "MAX_PROBLEMS",
    "ROLES",
    "SNAPSHOT_ID_PATTERN",
    "Conversation",
    "Problem",
    "ProblemKind",
    "SnapshotId",
    "check_snapshot_id",
    "file_sha256",
    "is_snapshot_id",
    "iter_lines",
    "new_snapshot_id",
    "parse_line",
    "pii_problems",
    "snapshot_path",
    "turn_problems",
    "validate_snapshot",
]
