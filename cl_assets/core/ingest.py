"""Ingestion: the only door through which interactions enter CL.

Every prompt and response is sanitized and every user id hashed *before* anything touches
disk. Bad lines of an import go to a quarantine file with their line number and a reason,
never their text (it may hold PII); good lines are never lost because of bad ones; a
re-import adds nothing (ids are client-supplied or derived from the content).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cl_assets.core.conversation import (
    ConversationError,
    from_openai,
    from_sharegpt,
    message_id,
    split_conversation,
)
from cl_assets.core.events import record_event
from cl_assets.core.files import atomic_write_lines
from cl_assets.core.identity import UserHasher
from cl_assets.core.pii import sanitize
from cl_assets.core.store import Store
from cl_assets.settings import Settings

log = logging.getLogger(__name__)

ID_PATTERN = r"^[A-Za-z0-9._:\-]{1,128}$"
_BATCH = 1_000
_DEFAULT_MAX_MESSAGES: int = Settings.model_fields["max_conversation_messages"].default


class MessageIn(BaseModel):
    """One message of the context that preceded an answer."""

    model_config = ConfigDict(extra="ignore")

    role: str = Field(pattern=r"^(system|user|assistant)$")
    content: str
    weight: int | None = Field(None, ge=0, le=1, description="OpenAI fine-tuning's weight: 0 = do not train on it.")


class InteractionIn(BaseModel):
    """One interaction as it arrives (the documented JSONL import schema).

    `context`: the messages before `prompt` (system prompt and earlier turns, oldest first);
    absent for a single-turn interaction. Import lines in the OpenAI `messages` or ShareGPT
    `conversations` shape are split into these fields (see `core.conversation`).
    """

    model_config = ConfigDict(extra="ignore")

    id: str | None = Field(None, pattern=ID_PATTERN, description="Client id; makes re-imports idempotent.")
    timestamp: datetime | None = Field(None, description="When it happened (ISO-8601; default: now).")
    session_id: str | None = Field(None, max_length=128)
    user_id: str | None = Field(None, max_length=256, description="Raw user id; stored only as a salted hash.")
    prompt: str = Field(min_length=1)
    response: str
    helpful: bool | None = Field(None, description="true 👍, false 👎, null unrated.")
    source: str = Field("import", max_length=32)
    model_version: str | None = Field(None, max_length=128)
    adapter_version: str | None = Field(None, max_length=64)
    latency_ms: float | None = Field(None, ge=0)
    ttft_ms: float | None = Field(None, ge=0)
    prompt_tokens: int | None = Field(None, ge=0)
    completion_tokens: int | None = Field(None, ge=0)
    tokens_per_s: float | None = Field(None, ge=0)
    context: list[MessageIn] | None = None


class IngestError(ValueError):
    """An interaction was refused; the message never contains its text."""


@dataclass(frozen=True)
class Ingested:
    id: str
    inserted: bool
    pii_types: tuple[str, ...]
    context_id: str | None = None  # the stored prompt message (its id hashes the whole context)


@dataclass
class ImportReport:
    """What one import did; counts only, safe to log and to show."""

    file: str
    lines: int = 0
    accepted: int = 0
    duplicates: int = 0
    quarantined: int = 0
    pii_counts: Counter[str] = field(default_factory=Counter)
    quarantine_path: Path | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "lines": self.lines,
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "quarantined": self.quarantined,
            "pii_counts": dict(sorted(self.pii_counts.items())),
            "quarantine_path": str(self.quarantine_path) if self.quarantine_path else None,
        }


def describe_validation_error(exc: ValidationError) -> str:
    """Field names and rules only: pydantic's own text would echo the (possibly PII) input."""
    return describe_errors(exc.errors(include_input=False, include_url=False))


def describe_errors(errors: Iterable[Mapping[str, Any]]) -> str:
    """pydantic's error dicts (also FastAPI's) as "field: rule; ...", never their input."""
    parts = []
    for err in errors:
        loc = ".".join(str(p) for p in err["loc"]) or "line"
        parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)


def _check_text(name: str, value: str, limit: int) -> None:
    if len(value) > limit:
        raise IngestError(f"{name} is {len(value)} characters, over the limit of {limit} (CL_MAX_MESSAGE_CHARS)")
    if "\x00" in value:
        raise IngestError(f"{name} contains a NUL character")


def content_id(parts: dict[str, Any]) -> str:
    """A stable id from sanitized content, so re-importing the same line is harmless."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def _json_str(value: str | None) -> str:
    return "null" if value is None else encode_basestring_ascii(value)


def _row_content_id(timestamp: str | None, session: str | None, user_hash: str | None, prompt: str, response: str) -> str:
    """`content_id` of a row's parts, by the same bytes written directly (the keys in
    sorted order, then json.dumps' own escaping) without building and sorting a dict."""
    canonical = (
        f'{{"p":{_json_str(prompt)},"r":{_json_str(response)},"s":{_json_str(session)},'
        f'"t":{_json_str(timestamp)},"u":{_json_str(user_hash)}}}'
    )
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


class Ingestor:
    """Sanitizes, hashes and stores interactions and feedback."""

    def __init__(self, settings: Settings, store: Store | None = None) -> None:
        self.settings = settings
        self.store = store or Store.from_settings(settings)
        self.hash_user = UserHasher(settings, self.store)

    # -- single interactions ----------------------------------------------------------------

    def to_row(self, item: InteractionIn) -> dict[str, Any]:
        """Validate limits, sanitize text, hash the user: the row as it will be stored."""
        return self.to_records(item)[0]

    def to_records(self, item: InteractionIn) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The row as it will be stored, and the sanitized messages of its context (parents
        first, ending with the prompt's own message; empty without a context)."""
        limit = self.settings.max_message_chars
        _check_text("prompt", item.prompt, limit)
        _check_text("response", item.response, limit)
        prompt, response = sanitize(item.prompt), sanitize(item.response)
        session = sanitize(item.session_id).text if item.session_id else None
        user_hash = self.hash_user(item.user_id)
        created = _as_utc(item.timestamp) if item.timestamp else datetime.now(UTC)
        messages = self._context_messages(item, user_hash, prompt.text, prompt.pii_types) if item.context is not None else []
        context_id = messages[-1]["id"] if messages else None
        row_id = item.id or _row_content_id(
            item.timestamp.isoformat() if item.timestamp else None, session, user_hash, prompt.text, response.text
        )
        if item.id is None and context_id is not None:  # the same last turn after another context is another turn
            row_id = content_id({"turn": row_id, "context": context_id})
        pii = {*prompt.pii_types, *response.pii_types}
        for message in messages:
            pii.update(message["pii_types"])
        row = {
            "id": row_id,
            "created_at": created,
            "session_id": session,
            "user_hash": user_hash,
            "prompt": prompt.text,
            "response": response.text,
            "pii_types": sorted(pii),
            "source": item.source,
            "model_version": item.model_version,
            "adapter_version": item.adapter_version,
            "latency_ms": item.latency_ms,
            "ttft_ms": item.ttft_ms,
            "prompt_tokens": item.prompt_tokens,
            "completion_tokens": item.completion_tokens,
            "tokens_per_s": item.tokens_per_s,
            "helpful": item.helpful,
            "feedback_at": created if item.helpful is not None else None,
            "context_id": context_id,
        }
        return row, messages

    def _context_messages(
        self, item: InteractionIn, user_hash: str | None, prompt: str, prompt_pii: Any
    ) -> list[dict[str, Any]]:
        """The context's messages sanitized and chained by content-hash ids, then the prompt's."""
        assert item.context is not None
        limit = self.settings.max_message_chars
        if len(item.context) + 2 > self.settings.max_conversation_messages:
            raise IngestError(
                f"{len(item.context) + 2} messages, over the limit of {self.settings.max_conversation_messages}"
                " (CL_MAX_CONVERSATION_MESSAGES)"
            )
        messages: list[dict[str, Any]] = []
        parent: str | None = None
        for index, message in enumerate(item.context):
            _check_text(f"context message {index}", message.content, limit)
            clean = sanitize(message.content)
            own = message_id(parent, user_hash, message.role, clean.text)
            messages.append({"id": own, "parent_id": parent, "role": message.role,
                             "content": clean.text, "pii_types": sorted(clean.pii_types), "user_hash": user_hash,
                             "weight": message.weight})  # fmt: skip
            parent = own
        last = message_id(parent, user_hash, "user", prompt)
        messages.append({"id": last, "parent_id": parent, "role": "user", "content": prompt,
                         "pii_types": sorted(prompt_pii), "user_hash": user_hash, "weight": None})  # fmt: skip
        return messages

    def ingest_interaction(self, **fields: Any) -> Ingested:
        """Store one interaction (e.g. a chat turn). Raises IngestError on bad input."""
        try:
            item = InteractionIn(**fields)
        except ValidationError as exc:
            raise IngestError(describe_validation_error(exc)) from None
        row, messages = self.to_records(item)
        inserted = self.store.insert_interactions([row], messages)
        return Ingested(row["id"], bool(inserted), tuple(row["pii_types"]), row["context_id"])

    def record_feedback(self, interaction_id: str, helpful: bool | None, kind: str = "explicit") -> int:
        """Append a 👍/👎 (or an implicit regenerate) to an interaction; returns the event id."""
        event_id = self.store.add_feedback(interaction_id, helpful, kind)
        log.info("feedback %s on %s (%s)", helpful, interaction_id, kind)
        return event_id

    # -- bulk import --------------------------------------------------------------------------

    def import_jsonl(self, path: Path, progress: Callable[[int], None] | None = None) -> ImportReport:
        """Import one JSONL file; `progress` receives bytes read so far."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such file: {path}")
        report = ImportReport(file=path.name)
        quarantine: list[dict[str, Any]] = []
        batch: list[dict[str, Any]] = []
        messages: list[dict[str, Any]] = []

        def flush() -> None:
            if not batch:
                return
            inserted = set(self.store.insert_interactions(batch, messages))
            for row in batch:
                if row["id"] in inserted:
                    report.accepted += 1
                    report.pii_counts.update(row["pii_types"])
                else:
                    report.duplicates += 1
            batch.clear()
            messages.clear()

        seen_ids: set[str] = set()
        for line_no, raw, read in _numbered_lines(path, self.settings.max_import_line_bytes):
            report.lines += 1
            if progress:
                progress(read)
            try:
                records = self._parse_line(raw)
            except IngestError as exc:
                quarantine.append({"file": path.name, "line": line_no, "reason": str(exc), "sha256": _sha(raw)})
                continue
            if records is None:
                report.lines -= 1  # blank line: not an interaction
                continue
            row, context = records
            if row["id"] in seen_ids:  # the same id twice in one file
                report.duplicates += 1
                continue
            seen_ids.add(row["id"])
            batch.append(row)
            messages.extend(context)
            if len(batch) >= _BATCH:
                flush()
        flush()

        report.quarantined = len(quarantine)
        if quarantine:
            report.quarantine_path = self._write_quarantine(path, quarantine)
        record_event(self.settings, self.store, "ingest", **report.as_dict())
        return report

    def _parse_line(self, raw: bytes | None) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
        """A line as (row, context messages); None for a blank line; IngestError with the reason."""
        if raw is None:
            raise IngestError(f"line longer than {self.settings.max_import_line_bytes} bytes (CL_MAX_IMPORT_LINE_BYTES)")
        if b'"messages"' in raw or b'"conversations"' in raw:  # maybe a conversation: parsed as one below
            item = _validate_slowly(raw, self.settings.max_conversation_messages)
        else:
            try:
                # pydantic parses and validates in one pass; a line it refuses (a blank one
                # too) is taken apart step by step, for a precise reason.
                item = InteractionIn.model_validate_json(raw)
            except ValidationError:
                item = _validate_slowly(raw, self.settings.max_conversation_messages)
        if item is None:
            return None
        return self.to_records(item)

    def _write_quarantine(self, source: Path, entries: list[dict[str, Any]]) -> Path:
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        target = self.settings.quarantine_dir / f"{source.stem}.{stamp}.jsonl"
        atomic_write_lines(target, (json.dumps(e, sort_keys=True) for e in entries))
        log.warning("%d line(s) of %s quarantined into %s", len(entries), source.name, target)
        return target

    # -- export --------------------------------------------------------------------------------

    def export_sanitized(self) -> tuple[Path, int]:
        """Rewrite `data/ingestion/raw_interactions.jsonl` from the store (sanitized rows only).

        Each line carries `messages`: the conversation up to and including the answer, system
        prompt first (a row without stored context: its prompt and response).
        """
        count = 0
        # Every message once, in memory (the tree is shared by the turns that extend it), so
        # a context is rebuilt by walking parents without a query per row.
        tree = {mid: (parent, role, content, weight) for mid, parent, role, content, weight in self.store.iter_messages()}

        def context(message: str | None) -> list[dict[str, Any]]:
            chain: list[dict[str, Any]] = []
            while message is not None and message in tree:
                parent, role, content, weight = tree[message]
                chain.append({"role": role, "content": content} if weight is None else
                             {"role": role, "content": content, "weight": weight})  # fmt: skip
                message = parent
            return chain[::-1]

        def lines() -> Iterator[str]:
            nonlocal count
            for row in self.store.iter_interactions():
                count += 1
                messages = context(row.context_id) or [{"role": "user", "content": row.prompt}]
                yield json.dumps(
                    {
                        "id": row.id,
                        "timestamp": row.created_at.isoformat(),
                        "session_id": row.session_id,
                        "user_hash": row.user_hash,
                        "prompt": row.prompt,
                        "response": row.response,
                        "messages": [*messages, {"role": "assistant", "content": row.response}],
                        "pii_types": row.pii_types,
                        "helpful": row.helpful,
                        "regenerated": row.regenerated,
                        "source": row.source,
                        "adapter_version": row.adapter_version,
                    },
                    ensure_ascii=False,
                )

        path = self.settings.raw_export_path
        atomic_write_lines(path, lines())
        return path, count


def _numbered_lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(line number, bytes or None when over `limit`, bytes read so far) without loading huge lines whole."""
    read = 0
    with path.open("rb") as fh:
        line_no = 0
        while True:
            chunk = fh.readline(limit + 1)
            if not chunk:
                return
            line_no += 1
            read += len(chunk)
            if len(chunk.rstrip(b"\r\n")) > limit:
                while chunk and not chunk.endswith(b"\n"):  # skip the rest of the long line
                    chunk = fh.readline(1 << 20)
                    read += len(chunk)
                yield line_no, None, read
                continue
            yield line_no, chunk, read


def _validate_slowly(raw: bytes, max_messages: int = _DEFAULT_MAX_MESSAGES) -> InteractionIn | None:
    """The line as an `InteractionIn` (None: a blank line), or an IngestError saying what
    is wrong with it. A line with `messages` (OpenAI) or `conversations` (ShareGPT) and no
    `prompt` is a conversation, split at its last (rated) answer."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IngestError(f"not valid UTF-8 (byte {exc.start})") from None
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise IngestError(f"not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise IngestError(f"expected a JSON object, got {type(obj).__name__}")
    if "prompt" not in obj and ("messages" in obj or "conversations" in obj):
        obj = _conversation_fields(obj, max_messages)
    try:
        return InteractionIn.model_validate(obj)
    except ValidationError as exc:
        raise IngestError(describe_validation_error(exc)) from None


def _conversation_fields(obj: dict[str, Any], max_messages: int) -> dict[str, Any]:
    """An OpenAI or ShareGPT line as `InteractionIn` fields: context, prompt, response."""
    try:
        if "messages" in obj:
            messages = from_openai(obj["messages"])
        else:
            messages = from_sharegpt(obj["conversations"])
        parsed = split_conversation(messages, max_messages)
    except ConversationError as exc:
        raise IngestError(f"conversation: {exc}") from None
    fields = {key: value for key, value in obj.items() if key not in ("messages", "conversations", "context")}
    return {**fields, "context": parsed.context, "prompt": parsed.prompt, "response": parsed.response}


def _sha(raw: bytes | None) -> str | None:
    return hashlib.sha256(raw).hexdigest() if raw is not None else None


def _as_utc(moment: datetime) -> datetime:
    """Naive timestamps are taken as UTC, not as the server's local time."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def import_landing(ingestor: Ingestor) -> list[ImportReport]:
    """Import every `*.jsonl` dropped in the landing folder, then move it to `landing/done/`.

    A file that cannot be read at all goes to the quarantine folder instead; bad lines of a
    readable file are quarantined line by line by `import_jsonl`.
    """
    settings = ingestor.settings
    landing = settings.landing_dir
    done = landing / "done"
    reports: list[ImportReport] = []
    for path in sorted(landing.glob("*.jsonl")):
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        try:
            report = ingestor.import_jsonl(path)
        except OSError as exc:
            settings.quarantine_dir.mkdir(parents=True, exist_ok=True)
            path.rename(settings.quarantine_dir / f"{path.name}.{stamp}")
            log.error("could not read %s (%s); moved to quarantine", path.name, type(exc).__name__)
            continue
        done.mkdir(parents=True, exist_ok=True)
        path.rename(done / f"{path.stem}.{stamp}{path.suffix}")
        reports.append(report)
    return reports
