"""`cl up` (what `make up` runs): Dagster UI and chat answer, Ctrl-C stops both, nothing is left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cl_assets.launcher import answers
from tests.conftest import REPO
from tests.defs.test_webserver import free_port


def _descendants(pid: int) -> set[int]:
    """All processes below `pid`, read from /proc (children files)."""
    found: set[int] = set()
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                kids = (task / "children").read_text().split()
            except OSError:
                continue
            for kid in map(int, kids):
                if kid not in found:
                    found.add(kid)
                    todo.append(kid)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_up_serves_ui_and_chat_and_ctrl_c_stops_everything(tmp_path: Path, tiny_model_dir: Path) -> None:
    ui_port, chat_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_")}
    env.update({"CL_HOME": str(tmp_path), "CL_BASE_MODEL": str(tiny_model_dir), "CL_USER_HASH_SALT": "up-test",
                "CL_ANCHOR_ROWS": "0", "DAGSTER_HOME": str(tmp_path / ".dagster_home")})
    # Like a terminal's Ctrl-C: SIGINT to `cl up` only (its children run in their own sessions).
    proc = subprocess.Popen([sys.executable, "-m", "cl_assets.cli", "up", "--port", str(ui_port), "--chat-port", str(chat_port)],
                            env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        urls = [f"http://127.0.0.1:{ui_port}/server_info", f"http://127.0.0.1:{chat_port}/"]
        while not all(answers(u) for u in urls):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "UI and chat did not both answer within 240 s"
            seen |= _descendants(proc.pid)
            time.sleep(1)
        seen |= _descendants(proc.pid)
        assert len(seen) >= 2
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, output
    assert "first start: ingested" in output
    assert "superseded" not in output.lower()  # `dg dev`, not the `dagster dev` Dagster now warns about
    time.sleep(1)
    assert [pid for pid in seen if _alive(pid)] == []
    assert not answers(urls[0]) and not answers(urls[1])
