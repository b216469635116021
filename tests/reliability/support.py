"""Helpers of the reliability suite: subprocess environments and deterministic waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from pydantic import SecretStr

from cl_assets.settings import Settings
from tests.conftest import REPO

SALT = "test-salt-not-secret"


def child_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of a `cl`/python child that sees the same home, database and salt."""
    # CL_ANCHOR_ROWS: conftest turns anchoring off for the tiny model; children inherit that.
    env = {k: v for k, v in os.environ.items() if not k.startswith("CL_") or k in {"CL_TEST_PG_URL", "CL_ANCHOR_ROWS"}}
    env.update({"PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"})
    env["CL_USER_HASH_SALT"] = SALT
    for name in sorted(settings.model_fields_set):  # every value the test chose, as CL_* variables
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[f"CL_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update(extra)
    return env


def start_python(code: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """`python -c code` in the repo, its output in `log` (read it when an assertion fails)."""
    fh = log.open("wb")
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT)


def wait_for(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> None:
    """Wait until the child creates `path`; fail with its output if it exits or times out first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"child exited with {proc.returncode} before {path.name}:\n{log.read_text(errors='replace')[-4000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"child did not reach {path.name} in {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")
        time.sleep(0.05)
