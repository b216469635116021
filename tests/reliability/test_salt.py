"""The user-id salt: a changed one is refused with a clear message, and it never reaches a log
line, an output or any file CL writes (apart from the generated salt file itself)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, make_settings
from tests.reliability.support import child_env

SALT = "s4lt-" + "7f3a9c1e5b2d4086" * 2  # distinctive, so any leak is unmistakable


def _cl(home: Path, *args: str, salt: str | None = SALT, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m cl_assets.cli -v ARGS` as a user would, with INFO logging on."""
    env = child_env(make_settings(home), DAGSTER_HOME=str(home / ".dagster_home"))
    if salt is None:
        env.pop("CL_USER_HASH_SALT")
    else:
        env["CL_USER_HASH_SALT"] = salt
    return subprocess.run(
        [sys.executable, "-m", "cl_assets.cli", "-v", *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )


def _landing(home: Path) -> Path:
    path = home / "in.jsonl"
    demo = (REPO / "data" / "demo" / "interactions.jsonl").read_text().splitlines()[:40]
    extra = [
        json.dumps({"user_id": "alice@example.com", "prompt": "Mail me at jane@example.com", "response": "Sure."}),
        '{"prompt": "truncated',
        json.dumps({"user_id": 12, "prompt": "wrong type", "response": "x"}),
    ]
    path.write_text("\n".join(demo + extra) + "\n")
    return path


def _files_holding(root: Path, needle: bytes, skip: set[Path]) -> list[str]:
    return [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p not in skip and needle in p.read_bytes()]


@pytest.mark.parametrize("configured", [True, False], ids=["CL_USER_HASH_SALT", "generated-salt-file"])
def test_salt_never_appears_in_logs_outputs_or_files(tmp_path: Path, configured: bool) -> None:
    home = tmp_path / "home"
    home.mkdir()
    source = _landing(home)
    salt = SALT if configured else None
    runs = [
        _cl(home, "ingest", str(source), salt=salt),
        _cl(home, "feedback", "demo-0001", "n", salt=salt),
        _cl(home, "pipeline", "--curate", "--note", "salt test", salt=salt),
        _cl(home, "forget-user", "cust_003", salt=salt),
    ]
    for run in runs:
        assert run.returncode == 0, run.stdout + run.stderr
    assert "INFO" in runs[0].stderr and "quarantined" in runs[0].stderr  # logging was really on
    settings = make_settings(home)
    value = SALT if configured else settings.salt_file.read_text().strip()
    assert len(value) >= 32
    outputs = "".join(r.stdout + r.stderr for r in runs)
    assert value not in outputs
    # Every file under the project home: store, exports, quarantine, events, registry, Dagster's storage.
    skip = set() if configured else {settings.salt_file}
    assert _files_holding(home, value.encode(), skip) == []
    assert (home / ".dagster_home").is_dir() and settings.learning_events_path.is_file()
    if not configured:
        assert settings.salt_file.stat().st_mode & 0o777 == 0o600


def test_changed_salt_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    source = _landing(home)
    first = _cl(home, "ingest", str(source), salt=None)  # the salt is generated into data/.user_hash_salt
    assert first.returncode == 0, first.stderr
    generated = (home / "data" / ".user_hash_salt").read_text().strip()

    for args in (["ingest", str(source)], ["feedback", "demo-0001", "y"], ["forget-user", "cust_003"]):
        run = _cl(home, *args, salt=SALT)  # someone sets CL_USER_HASH_SALT afterwards
        assert run.returncode == 1, args
        message = " ".join(run.stderr.split())
        assert "The user-id salt differs from the one this database was created with" in message
        assert "Restore the original CL_USER_HASH_SALT" in message and "Traceback" not in run.stderr
        assert SALT not in run.stdout + run.stderr and generated not in run.stdout + run.stderr
    # Nothing was erased under the wrong salt.
    from cl_assets.core.store import Store

    assert Store.from_settings(make_settings(home)).count_interactions() == 41  # 40 demo lines + alice's
