"""The terminal chat through a real pseudo-terminal: ask, read the answer, rate it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pexpect

from cl_assets.core.store import Store
from tests.conftest import REPO, make_settings

SALT = "terminal-test-salt"


def test_terminal_chat_records_feedback(tmp_path: Path, tiny_model_dir: Path) -> None:
    env = {
        **os.environ,
        "CL_HOME": str(tmp_path),
        "CL_BASE_MODEL": str(tiny_model_dir),
        "CL_USER_HASH_SALT": SALT,
        "CL_MAX_NEW_TOKENS": "8",
        "CL_MAX_MESSAGE_CHARS": "200",
    }
    child = pexpect.spawn(sys.executable, ["-m", "cl_chat.terminal"], cwd=str(REPO), env=env, encoding="utf-8", timeout=120)
    try:
        child.expect(r"answering with the base model \S+ \(no adapter deployed\)")
        child.expect_exact("you> ")
        child.sendline("My email is jane@example.com. Where is order 100234?")
        child.expect_exact("bot> ")
        child.expect_exact("helpful? [y/n/Enter] ")
        child.sendline("y")
        child.expect_exact("(recorded 👍)")

        child.expect_exact("you> ")
        child.sendline("x" * 300)
        child.expect_exact("! Your message is 300 characters long; the limit is 200")

        child.expect_exact("you> ")
        child.sendline("second question")
        child.expect_exact("helpful? [y/n/Enter] ")
        child.sendline("")  # Enter: no rating

        child.expect_exact("you> ")
        child.sendline("/reset")
        child.expect_exact("(history cleared)")
        child.expect_exact("you> ")
        child.sendline("third question")
        child.expect_exact("helpful? [y/n/Enter] ")
        child.sendline("n")
        child.expect_exact("(recorded 👎)")

        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0

    store = Store.from_settings(make_settings(tmp_path, user_hash_salt=SALT))
    rows = list(store.iter_interactions())
    assert [r.helpful for r in rows] == [True, None, False]
    assert rows[0].prompt == "My email is [EMAIL]. Where is order 100234?"
    assert {r.source for r in rows} == {"chat"} and len({r.session_id for r in rows}) == 1
    assert (tmp_path / "logs" / "generation_metrics.jsonl").read_text().count("\n") == 3
