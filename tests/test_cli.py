"""The `cl` command line, driven as a user would (Typer's runner and a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cl_assets.cli import app
from cl_assets.core.store import Store
from tests.conftest import REPO, make_settings

runner = CliRunner()


@pytest.fixture
def cl_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CL_HOME", str(tmp_path))
    monkeypatch.setenv("CL_USER_HASH_SALT", "cli-test-salt")
    return tmp_path


def test_help_on_every_command() -> None:
    for args in ([], ["ingest"], ["sanitize"], ["feedback"], ["db", "upgrade"]):
        result = runner.invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output


def test_ingest_twice_same_count_and_quarantine_summary(cl_env: Path) -> None:
    demo = REPO / "data" / "demo" / "interactions.jsonl"
    first = runner.invoke(app, ["ingest", str(demo)])
    assert first.exit_code == 0, first.output
    settings = make_settings(cl_env, user_hash_salt="cli-test-salt")
    count = Store.from_settings(settings).count_interactions()
    second = runner.invoke(app, ["ingest", str(demo)])
    assert second.exit_code == 0
    assert Store.from_settings(settings).count_interactions() == count > 300
    assert f"interactions in store: {count}" in second.output
    assert settings.raw_export_path.exists()

    broken = cl_env / "broken.jsonl"
    broken.write_text('{"id": "x1", "prompt": "fine", "response": "ok"}\n{not json\n')
    result = runner.invoke(app, ["ingest", str(broken)])
    assert result.exit_code == 0
    assert "1 line(s) quarantined" in result.output


def test_ingest_missing_file_fails_clearly(cl_env: Path) -> None:
    result = runner.invoke(app, ["ingest", str(cl_env / "nope.jsonl")])
    assert result.exit_code == 1 and "no such file" in result.output


def test_sanitize_plain_and_jsonl_keep_line_order() -> None:
    plain = runner.invoke(app, ["sanitize", "-"], input="mail a@b.co please\nnothing here\n")
    assert plain.exit_code == 0
    assert plain.stdout.splitlines() == ["mail [EMAIL] please", "nothing here"]

    lines = [json.dumps({"text": "ssn 123-45-6789", "k": 1}), "not json", json.dumps({"text": "Lot 42 is in Dayton"})]
    result = runner.invoke(app, ["sanitize", "--jsonl", "-"], input="\n".join(lines) + "\n")
    assert result.exit_code == 1  # one bad line is reported, the others still written in order
    out = [json.loads(x) for x in result.stdout.splitlines()]
    assert out[0] == {"text": "ssn [SSN]", "k": 1, "pii_types": ["SSN"]}
    assert out[1]["line"] == 2 and "error" in out[1]
    assert out[2] == {"text": "Lot 42 is in Dayton", "pii_types": []}


def test_feedback_and_db_upgrade(cl_env: Path) -> None:
    assert runner.invoke(app, ["db", "upgrade"]).exit_code == 0
    src = cl_env / "one.jsonl"
    src.write_text(json.dumps({"id": "f-1", "prompt": "q?", "response": "a."}) + "\n")
    assert runner.invoke(app, ["ingest", str(src)]).exit_code == 0
    assert runner.invoke(app, ["feedback", "f-1", "y"]).exit_code == 0
    store = Store.from_settings(make_settings(cl_env, user_hash_salt="cli-test-salt"))
    assert store.get_interaction("f-1").helpful is True
    missing = runner.invoke(app, ["feedback", "nope", "n"])
    assert missing.exit_code == 1 and "no interaction" in missing.output
    assert runner.invoke(app, ["feedback", "f-1", "maybe"]).exit_code == 1


def test_console_script_streams_stdin(tmp_path: Path) -> None:
    """The installed `cl` entry point, as a real process reading a pipe."""
    exe = Path(sys.executable).parent / "cl"
    text = "".join(f"row {i} call 555-123-4567\n" for i in range(2_000))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    out = subprocess.run([str(exe), "sanitize", "-"], input=text, capture_output=True, text=True, check=True, env=env)
    lines = out.stdout.splitlines()
    assert len(lines) == 2_000 and lines[1999] == "row 1999 call [PHONE]"


def test_curating_with_nothing_qualifying_says_so_and_registers_nothing(cl_env: Path) -> None:
    rated_down = cl_env / "down.jsonl"
    rated_down.write_text(json.dumps({"prompt": "Is it good?", "response": "No idea.", "helpful": False}) + "\n")
    assert runner.invoke(app, ["ingest", str(rated_down)]).exit_code == 0
    result = runner.invoke(app, ["pipeline", "--curate"])
    assert result.exit_code == 1
    assert "nothing qualifies for a snapshot" in " ".join(result.output.split())
    settings = make_settings(cl_env, user_hash_salt="cli-test-salt")
    assert Store.from_settings(settings).list_snapshots() == []
    assert not list(settings.curated_dir.glob("curated_*.jsonl"))


def test_export_snapshot_in_both_formats(cl_env: Path) -> None:
    line = {"messages": [{"role": "user", "content": "What is the free shipping threshold?"},
                         {"role": "assistant", "content": "Orders over $175 ship free."},
                         {"role": "user", "content": "And for Canada?"},
                         {"role": "assistant", "content": "A flat $38 with Northstar Logistics."}], "helpful": True}  # fmt: skip
    source = cl_env / "conv.jsonl"
    source.write_text(json.dumps(line) + "\n")
    assert runner.invoke(app, ["ingest", str(source)]).exit_code == 0
    from cl_assets.core.curation import curate_snapshot

    settings = make_settings(cl_env, user_hash_salt="cli-test-salt")
    snap = curate_snapshot(settings, Store.from_settings(settings), snapshot_id="20261102_000000")
    out = cl_env / "share.jsonl"
    result = runner.invoke(app, ["export", "snapshot", snap.id, "--format", "sharegpt", "-o", str(out)])
    assert result.exit_code == 0, result.output
    [shared] = [json.loads(x) for x in out.read_text().splitlines()]
    assert [m["from"] for m in shared["conversations"]] == ["human", "gpt", "human", "gpt"]
    result = runner.invoke(app, ["export", "snapshot", snap.id])
    assert result.exit_code == 0 and (settings.data_dir / "exports" / f"curated_{snap.id}.openai.jsonl").is_file()
    assert runner.invoke(app, ["export", "snapshot", snap.id, "--format", "csv"]).exit_code == 1
    assert runner.invoke(app, ["export", "snapshot", "20990101_000000"]).exit_code == 1


def test_registry_listings_keep_whole_ids_at_80_columns_and_give_json(cl_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cl_assets.core.registry import Registry, adapter_dir, files_sha256

    settings = make_settings(cl_env, user_hash_salt="cli-test-salt")
    store = Store.from_settings(settings)
    ids = ["20261120_101500", "20261121_093000"]
    for sid in ids:
        folder = adapter_dir(settings, sid)
        folder.mkdir(parents=True)
        (folder / "adapter_config.json").write_text("{}")  # the listing reads the registry, not the weights
        store.add_snapshot(id=sid, path=f"curated_{sid}.jsonl", sha256="0" * 64, n_rows=182,
                           note="a long note about why this snapshot was curated, longer than the terminal is wide")  # fmt: skip
        store.upsert_adapter(sid, path=str(folder), files_sha256=files_sha256(folder), mode="lora-bf16-autocast-cpu",
                             gate_passed=True, accuracy=0.667, general_accuracy=0.694, parent_id=ids[0] if sid != ids[0] else None)  # fmt: skip
    Registry(settings, store).deploy(ids[1], actor="someone-with-a-long-name", reason="rolled forward after the gate passed on the new demo")

    monkeypatch.setenv("COLUMNS", "80")
    for args in (["registry"], ["registry", "history"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        assert max(len(line) for line in lines) <= 80, result.output
        assert ids[1] in result.output  # whole, on one line: the id someone copies for a rollback
    table = runner.invoke(app, ["registry"]).output
    assert ids[0] in table and "67%" in table and "69%" in table and "◀" in table

    listed = json.loads(runner.invoke(app, ["registry", "--json"]).output)
    assert listed["deployed"] == ids[1]
    assert [r["snapshot"] for r in listed["snapshots"]] == ids and listed["snapshots"][1]["parent"] == ids[0]
    [deployment] = json.loads(runner.invoke(app, ["registry", "history", "--json"]).output)
    assert deployment["adapter"] == ids[1] and deployment["actor"] == "someone-with-a-long-name"

    monkeypatch.setenv("COLUMNS", "140")
    wide = runner.invoke(app, ["registry"]).output
    assert "lora-bf16-autocast-cpu" in wide  # a wide terminal shows the training mode and parent too


def test_ingest_json_report(cl_env: Path) -> None:
    source = cl_env / "two.jsonl"
    source.write_text(json.dumps({"prompt": "Mail me at jane@example.com", "response": "Sure."}) + "\n{not json\n")
    result = runner.invoke(app, ["ingest", str(source), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    [one] = report["files"]
    assert (one["lines"], one["accepted"], one["quarantined"]) == (2, 1, 1)
    assert one["pii_counts"] == {"EMAIL": 1} and report["interactions_in_store"] == 1


def test_chat_web_refuses_a_blank_api_key_before_loading_the_model(cl_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CL_API_KEY", " ")
    monkeypatch.setenv("CL_BASE_MODEL", str(cl_env / "no-such-model"))  # never reached
    result = runner.invoke(app, ["chat", "--web"])
    assert result.exit_code == 1
    assert "error: CL_API_KEY is set but empty" in result.output + (result.stderr or "")
