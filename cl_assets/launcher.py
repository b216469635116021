"""Serve the Dagster UI and the chat together until Ctrl-C, then stop both and their children.

`dg dev` (like `dagster dev`) maps SIGTERM to its SIGINT handler, and a process started in the background of a
non-interactive shell inherits SIGINT ignored, so children get both signals reset to default
and their own session; shutdown then signals each whole process group we started, by id.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cl_assets.defs.home import prepare_dagster_home
from cl_assets.settings import Settings

PACKAGE_ROOT = Path(__file__).resolve().parents[1]
#: `dg` (dagster-dg-cli) of this interpreter: `dg dev` is what `dagster dev` is superseded by.
DG = [sys.executable, "-c", "from dagster_dg_cli.cli import main; main()"]


def _reset_signals() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def workspace_file(settings: Settings) -> Path:
    """The project's workspace.yaml (the checkout's, else one written into DAGSTER_HOME)."""
    for candidate in (settings.home / "workspace.yaml", PACKAGE_ROOT / "workspace.yaml"):
        if candidate.is_file():
            return candidate
    path = settings.dagster_home / "workspace.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("load_from:\n  - python_module:\n      module_name: cl_assets.definitions\n      location_name: cl\n")
    return path


@dataclass
class Service:
    name: str
    url: str
    process: subprocess.Popen[bytes]


def start(name: str, argv: Sequence[str], url: str, env: dict[str, str], cwd: Path) -> Service:
    process = subprocess.Popen(list(argv), env=env, cwd=cwd, preexec_fn=_reset_signals, start_new_session=True)
    return Service(name, url, process)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310 - our own 127.0.0.1 service
            return response.status == 200
    except OSError:
        return False


def stop(services: Sequence[Service], grace_s: float = 20.0) -> None:
    """SIGTERM each service's process group, wait, then SIGKILL what is left."""
    for svc in services:
        if svc.process.poll() is None:
            _signal_group(svc.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for svc in services:
        try:
            svc.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for svc in services:  # children of a service share its group; none may outlive us
        _signal_group(svc.process.pid, signal.SIGKILL)
        if svc.process.poll() is None:
            svc.process.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def serve(settings: Settings, *, dagster_port: int = 3000, chat_port: int | None = None, with_chat: bool = True) -> int:
    """Run until SIGINT/SIGTERM (or a service dies); returns the exit code."""
    home = prepare_dagster_home(settings)
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    host = "127.0.0.1"
    services = [
        start(
            "Dagster UI",
            [*DG, "dev", "-w", str(workspace_file(settings)), "-h", host, "-p", str(dagster_port)],
            f"http://{host}:{dagster_port}/server_info",
            env,
            settings.home,
        )
    ]
    if with_chat:
        port = chat_port or settings.chat_port
        services.append(
            start("chat", [sys.executable, "-m", "cl_assets.cli", "chat", "--web", "--port", str(port)],
                  f"http://{settings.chat_host}:{port}/", env, settings.home)
        )
    stopping = False

    def _on_signal(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    announced: set[str] = set()
    code = 0
    try:
        while not stopping:
            for svc in services:
                if svc.process.poll() is not None:
                    print(f"{svc.name} exited with code {svc.process.returncode}; stopping", file=sys.stderr)
                    stopping, code = True, 1
                elif svc.name not in announced and answers(svc.url):
                    announced.add(svc.name)
                    print(f"{svc.name} ready at {svc.url.rsplit('/', 1)[0]}/", file=sys.stderr, flush=True)
            time.sleep(0.5)
    finally:
        print("stopping…", file=sys.stderr, flush=True)
        stop(services)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return code
