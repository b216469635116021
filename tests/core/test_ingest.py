"""Ingestion: sanitized storage, salt discipline, idempotent imports and quarantine."""

from __future__ import annotations

import json
import logging
import re
import stat
from pathlib import Path

import pytest

from cl_assets.core.identity import SaltMismatchError, hash_user_id
from cl_assets.core.ingest import IngestError, Ingestor, InteractionIn, content_id
from cl_assets.core.pii import find_pii
from cl_assets.settings import Settings
from tests.conftest import REPO, make_settings

DEMO = REPO / "data" / "demo" / "interactions.jsonl"


def _write_jsonl(path: Path, lines: list[object]) -> Path:
    with path.open("wb") as fh:
        for line in lines:
            fh.write(line if isinstance(line, bytes) else (json.dumps(line) if not isinstance(line, str) else line).encode())
            fh.write(b"\n")
    return path


def test_turn_is_stored_sanitized_with_hashed_user(settings: Settings) -> None:
    ingestor = Ingestor(settings)
    done = ingestor.ingest_interaction(
        prompt="I'm jane.doe@example.com, card 4111 1111 1111 1111",
        response="Thanks!",
        user_id="jane",
        session_id="s1",
        latency_ms=12.5,
    )
    row = ingestor.store.get_interaction(done.id)
    assert "jane.doe@example.com" not in row.prompt and "[EMAIL]" in row.prompt
    assert "4111" not in row.prompt and "[CREDIT_CARD]" in row.prompt
    assert row.pii_types == ["CREDIT_CARD", "EMAIL"]
    assert row.user_hash == hash_user_id("jane", "test-salt-not-secret") and "jane" not in row.user_hash
    assert row.latency_ms == 12.5


def test_bad_turn_is_refused_with_a_message_that_hides_its_text(settings: Settings) -> None:
    ingestor = Ingestor(settings)
    with pytest.raises(IngestError) as info:
        ingestor.ingest_interaction(prompt="mail me at x@y.com " * 1000, response="ok")
    assert "over the limit" in str(info.value) and "x@y.com" not in str(info.value)
    with pytest.raises(IngestError, match="prompt"):
        ingestor.ingest_interaction(prompt="", response="ok")
    with pytest.raises(IngestError, match="NUL"):
        ingestor.ingest_interaction(prompt="a\x00b", response="ok")
    assert ingestor.store.count_interactions() == 0


def test_missing_salt_is_generated_once_private_and_warned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    settings = make_settings(tmp_path, user_hash_salt=None)
    with caplog.at_level(logging.WARNING):
        first = Ingestor(settings)
    assert "CL_USER_HASH_SALT is not set" in caplog.text
    mode = stat.S_IMODE(settings.salt_file.stat().st_mode)
    assert mode == 0o600
    salt = settings.salt_file.read_text().strip()
    assert salt not in caplog.text
    a = first.ingest_interaction(prompt="hi there", response="hello", user_id="u1")
    second = Ingestor(settings)
    b = second.ingest_interaction(prompt="hi again", response="hello", user_id="u1")
    assert first.store.get_interaction(a.id).user_hash == second.store.get_interaction(b.id).user_hash


def test_changed_salt_is_refused_without_revealing_either(tmp_path: Path) -> None:
    Ingestor(make_settings(tmp_path, user_hash_salt="original-salt-value"))
    with pytest.raises(SaltMismatchError) as info:
        Ingestor(make_settings(tmp_path, user_hash_salt="another-salt-value"))
    assert "original-salt-value" not in str(info.value) and "another-salt-value" not in str(info.value)


def test_reimport_adds_no_duplicates_and_content_ids_are_stable(settings: Settings, tmp_path: Path) -> None:
    src = _write_jsonl(
        tmp_path / "in.jsonl",
        [
            {"id": "a-1", "prompt": "Where is Lot 42?", "response": "In Dayton.", "helpful": True},
            {"prompt": "no id here", "response": "derived id", "timestamp": "2026-11-01T10:00:00Z"},
        ],
    )
    ingestor = Ingestor(settings)
    first = ingestor.import_jsonl(src)
    second = ingestor.import_jsonl(src)
    assert (first.accepted, first.duplicates) == (2, 0)
    assert (second.accepted, second.duplicates) == (0, 2)
    assert ingestor.store.count_interactions() == 2
    assert ingestor.store.feedback_since(0)[0] == 1  # the imported 👍, once


def test_broken_lines_are_quarantined_with_reasons_and_good_ones_kept(settings: Settings, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_import_line_bytes=2_000)
    secret_line = '{"prompt": "my ssn is 123-45-6789", "response": '  # truncated JSON holding PII
    src = _write_jsonl(
        tmp_path / "mixed.jsonl",
        [
            {"id": "ok-1", "prompt": "good one", "response": "fine"},
            secret_line,
            "[1, 2, 3]",
            {"id": "bad-type", "prompt": 42, "response": "x"},
            b'{"prompt": "\xff\xfe", "response": "x"}',
            {"id": "too-long", "prompt": "y" * 5_000, "response": "x"},
            "",
            {"id": "bad id with spaces", "prompt": "p", "response": "r"},
            {"id": "ok-2", "prompt": "good two", "response": "fine", "helpful": False},
        ],
    )
    ingestor = Ingestor(settings)
    report = ingestor.import_jsonl(src)
    assert (report.lines, report.accepted, report.quarantined) == (8, 2, 6)
    entries = [json.loads(x) for x in report.quarantine_path.read_text().splitlines()]
    assert [e["line"] for e in entries] == [2, 3, 4, 5, 6, 8]
    reasons = " | ".join(e["reason"] for e in entries)
    for expected in ("not valid JSON", "expected a JSON object", "prompt", "UTF-8", "longer than 2000 bytes", "id"):
        assert expected in reasons
    quarantine_text = report.quarantine_path.read_text()
    assert "123-45-6789" not in quarantine_text and "good one" not in quarantine_text
    assert ingestor.store.get_interaction("ok-2").helpful is False


def test_events_and_export_are_written_sanitized(settings: Settings, tmp_path: Path) -> None:
    src = _write_jsonl(tmp_path / "e.jsonl", [{"id": "e1", "prompt": "call me at (555) 123-4567", "response": "ok"}])
    ingestor = Ingestor(settings)
    ingestor.import_jsonl(src)
    path, count = ingestor.export_sanitized()
    exported = [json.loads(x) for x in path.read_text().splitlines()]
    assert count == 1 and exported[0]["prompt"] == "call me at [PHONE]" and exported[0]["pii_types"] == ["PHONE"]
    events = [json.loads(x) for x in settings.learning_events_path.read_text().splitlines()]
    assert events[-1]["kind"] == "ingest" and events[-1]["accepted"] == 1 and events[-1]["pii_counts"] == {"PHONE": 1}
    assert not list(path.parent.glob(".*.tmp"))


def test_derived_ids_are_the_content_hash_of_the_sanitized_row(settings: Settings) -> None:
    """`to_row` writes `content_id`'s canonical JSON directly; the bytes must stay the same,
    or re-importing after an upgrade would duplicate every row without a client id."""
    ingestor = Ingestor(settings)
    for fields in (
        {"prompt": "mail a@b.co \u2028 \"quoted\" \\ é", "response": "ok", "timestamp": "2026-11-01T10:00:00+02:00"},
        {"prompt": "p", "response": "", "session_id": "call 555-123-4567", "user_id": "jäne"},
        {"prompt": "naive time", "response": "r", "timestamp": "2026-11-01T10:00:00"},
    ):
        item = InteractionIn.model_validate(fields)
        row = ingestor.to_row(item)
        expected = content_id({
            "t": item.timestamp.isoformat() if item.timestamp else None,
            "s": row["session_id"],
            "u": row["user_hash"],
            "p": row["prompt"],
            "r": row["response"],
        })
        assert row["id"] == expected


@pytest.mark.parametrize(
    "line",
    [
        b'{"prompt": "a", "prompt": "b", "response": "x"}',
        b'{"prompt": "a\\ud800", "response": "x", "user_id": "\\udc00"}',
        b'{"prompt": "a", "response": "x", "latency_ms": NaN}',
        b'{"prompt": "a", "response": "x", "latency_ms": Infinity}',
        b'{"prompt": "a", "response": "x", "helpful": "yes", "prompt_tokens": 2.0, "timestamp": 1700000000}',
        b'{"prompt": "a\tb", "response": "x"}',
        b'\xef\xbb\xbf{"prompt": "a", "response": "x"}',
        b'{"prompt": "a", "response": "x"} trailing',
        b"\xc2\xa0\n",
        b"\n",
    ],
)
def test_one_pass_parse_agrees_with_the_step_by_step_one(settings: Settings, line: bytes) -> None:
    """Lines go through pydantic's JSON parser first; whatever it decides must be what
    `json.loads` and validation decide (the path that words the quarantine reasons)."""
    from cl_assets.core.ingest import _validate_slowly

    ingestor = Ingestor(settings)

    def outcome(parse):  # type: ignore[no-untyped-def]
        try:
            return ("ok", parse())
        except IngestError as exc:
            return ("refused", str(exc))

    def slowly():  # type: ignore[no-untyped-def]
        item = _validate_slowly(line)
        return None if item is None else ingestor.to_records(item)

    fast, slow = outcome(lambda: ingestor._parse_line(line)), outcome(slowly)
    if fast[0] == "ok" and fast[1] is not None:  # `ingested_at`-free rows; created_at may be "now"
        assert slow[0] == "ok" and {**fast[1][0], "created_at": None} == {**slow[1][0], "created_at": None}
    else:
        assert fast == slow


def _raw_pii_values(path: Path) -> set[str]:
    """Every PII value and raw user id in the demo file (found independently of storage)."""
    values: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts = [m["content"] for m in row["messages"]] if "messages" in row else [row["prompt"], row["response"]]
        for text in texts:
            values.update(text[f.start : f.end] for f in find_pii(text))
            values.update(re.findall(r"[\w.+-]+@[\w-]+\.[\w.]+", text))
        if row.get("user_id"):
            values.add(row["user_id"])
    return {v for v in values if len(v) >= 6}


def test_demo_ingest_twice_same_count_and_no_raw_pii_on_disk(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    ingestor = Ingestor(settings)
    first = ingestor.import_jsonl(DEMO)
    count = ingestor.store.count_interactions()
    second = ingestor.import_jsonl(DEMO)
    assert second.accepted == 0 and ingestor.store.count_interactions() == count == first.accepted
    assert first.quarantined == 0 and sum(first.pii_counts.values()) > 0
    ingestor.export_sanitized()
    ingestor.store.close()

    secrets = _raw_pii_values(DEMO)
    assert len(secrets) > 10
    leaks = []
    for base in (settings.data_dir, settings.logs_dir):
        for file in base.rglob("*"):
            if file.is_file():
                blob = file.read_bytes()
                leaks += [(file.name, s) for s in secrets if s.encode() in blob]
    assert leaks == []


SYSTEM = "You are the support assistant of a bakery supply shop."
THREE_TURNS = {
    "messages": [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "Hi, I'm jane.doe@example.com. What is the free shipping threshold?"},
        {"role": "assistant", "content": "Orders over $50 ship free.", "weight": 0},
        {"role": "user", "content": "And for Canada?"},
        {"role": "assistant", "content": "Canadian orders ship free over $80."},
        {"role": "user", "content": "Does that include Quebec?"},
        {"role": "assistant", "content": "Yes, every province is included."},
    ],
    "helpful": True,
    "user_id": "jane",
    "timestamp": "2026-11-02T10:00:00Z",
}


def test_conversation_lines_are_stored_as_a_sanitized_tree(settings: Settings, tmp_path: Path) -> None:
    sharegpt = {
        "conversations": [
            {"from": "human", "value": "What is the free shipping threshold?"},
            {"from": "gpt", "value": "Orders over $50 ship free."},
            {"from": "human", "value": "And for Canada?"},
            {"from": "gpt", "value": "Over $80 for Canada."},
        ],
        "helpful": False,
        "user_id": "sam",
    }
    follow_up = {**THREE_TURNS, "messages": THREE_TURNS["messages"][:5], "helpful": None}  # a prefix of the first
    path = _write_jsonl(tmp_path / "conv.jsonl", [THREE_TURNS, sharegpt, follow_up, {"prompt": "Flat?", "response": "Yes."}])
    ingestor = Ingestor(settings)
    report = ingestor.import_jsonl(path)
    assert (report.accepted, report.quarantined) == (4, 0)
    assert report.pii_counts == {"EMAIL": 2}  # both rows whose context holds the address

    store = ingestor.store
    rows = {r.response: r for r in store.iter_interactions()}
    last = rows["Yes, every province is included."]
    assert last.helpful is True and last.response == "Yes, every province is included." and last.pii_types == ["EMAIL"]
    conversation = store.conversation(last.id)
    assert [m["role"] for m in conversation] == ["system", "user", "assistant", "user", "assistant", "user", "assistant"]
    assert conversation[1]["content"] == "Hi, I'm [EMAIL]. What is the free shipping threshold?"
    assert conversation[2] == {"role": "assistant", "content": "Orders over $50 ship free.", "weight": 0}
    assert [m["content"] for m in store.conversation(rows["Canadian orders ship free over $80."].id)] == [
        m["content"] for m in THREE_TURNS["messages"][:1]
    ] + ["Hi, I'm [EMAIL]. What is the free shipping threshold?"] + [m["content"] for m in THREE_TURNS["messages"][2:5]]
    # Jane's two rows share their first four messages; Sam's conversation is his own tree.
    assert store.count_messages() == 6 + 3
    assert store.conversation(rows["Yes."].id) == [{"role": "user", "content": "Flat?"}, {"role": "assistant", "content": "Yes."}]

    again = ingestor.import_jsonl(path)
    assert again.accepted == 0 and again.duplicates == 4 and store.count_messages() == 9

    ingestor.export_sanitized()
    exported = [json.loads(x) for x in settings.raw_export_path.read_text().splitlines()]
    quebec = next(e for e in exported if e["prompt"] == "Does that include Quebec?")
    assert quebec["messages"] == conversation
    assert "jane.doe@example.com" not in settings.raw_export_path.read_text()


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ({"messages": [{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}]}, "no user message"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "user", "content": "q2"},
                       {"role": "assistant", "content": "a"}]}, "where 'assistant' was expected"),  # fmt: skip
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"},
                       {"role": "system", "content": "late"}]}, "where 'user' was expected"),  # fmt: skip
        ({"messages": [{"role": "user", "content": "q"}]}, "last message must be the assistant"),
        ({"messages": [{"role": "user", "content": "<|im_start|>system"}, {"role": "assistant", "content": "a"}]},
         "control token"),  # fmt: skip
        ({"messages": [{"role": "user", "content": "q" * 9_000}, {"role": "assistant", "content": "a"}]}, "over the limit"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}] * 101}, "over the limit of 200"),
        ({"messages": [{"role": "tool", "content": "{}"}, {"role": "user", "content": "q"}]}, "role 'tool'"),
        ({"messages": [{"role": "user", "content": "q", "weight": 1}, {"role": "assistant", "content": "a"}]}, "weight"),
        ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}, "weight 0"),
        ({"conversations": [{"from": "human", "value": "q"}, {"from": "bot", "value": "a"}]}, "'from' 'bot'"),
        ({"messages": "not a list"}, "non-empty list"),
    ],
)
def test_malformed_conversations_are_quarantined_with_their_reason(
    settings: Settings, tmp_path: Path, line: dict, reason: str
) -> None:
    good = {"messages": [{"role": "user", "content": "Fine question"}, {"role": "assistant", "content": "Fine answer"}]}
    path = _write_jsonl(tmp_path / "bad.jsonl", [good, line])
    report = Ingestor(settings).import_jsonl(path)
    assert (report.accepted, report.quarantined) == (1, 1)
    [entry] = [json.loads(x) for x in report.quarantine_path.read_text().splitlines()]
    assert entry["line"] == 2 and reason in entry["reason"] and "Fine" not in entry["reason"]
