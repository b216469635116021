"""Network exposure: the chat and the Dagster UI listen on 127.0.0.1 unless told otherwise, and
with `CL_CHAT_AUTH` nothing of the chat but its login page answers without logging in."""

from __future__ import annotations

import http.cookiejar
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cl_assets.settings import Settings
from tests.conftest import make_settings
from tests.helpers import free_port


def _listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket in LISTEN state on `port` (Linux /proc/net/tcp{,6})."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if int(hex_port, 16) == port and fields[3] == "0A":
                found.add(address)
    return found


def _status(url: str, opener: Any = None) -> int:
    try:
        with (opener or urllib.request.build_opener()).open(url, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.fixture
def serve_chat(tiny_model_dir: Path) -> Iterator[Any]:
    """Start the real Gradio chat with `settings` (in this process); closed afterwards."""
    from cl_chat.server import launch
    from cl_chat.engine import ChatEngine

    demos = []

    def start(settings: Settings) -> int:
        port = free_port()
        demos.append(launch(ChatEngine(settings, model=tiny_model_dir), settings, port=port, block=False))
        return port

    yield start
    for demo in demos:
        demo.close()


def test_chat_listens_on_loopback_only_by_default(tmp_path: Path, serve_chat: Any) -> None:
    settings = make_settings(tmp_path)
    assert settings.chat_host == "127.0.0.1"
    port = serve_chat(settings)
    assert _listening_addresses(port) == {"0100007F"}  # 127.0.0.1, and no other interface
    assert _status(f"http://127.0.0.1:{port}/config") == 200  # no CL_CHAT_AUTH: open on loopback


def test_chat_answers_nothing_but_its_login_page_without_cl_chat_auth_credentials(tmp_path: Path, serve_chat: Any) -> None:
    settings = make_settings(tmp_path, chat_auth="alice:s3cret-pass")
    port = serve_chat(settings)
    base = f"http://127.0.0.1:{port}"
    assert _status(f"{base}/") == 200  # the login page
    for path in ("/config", "/gradio_api/info", "/gradio_api/queue/status"):
        assert _status(base + path) == 401
    browser = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))

    def login(password: str) -> int:
        form = urllib.parse.urlencode({"username": "alice", "password": password}).encode()
        try:
            with browser.open(f"{base}/login", data=form, timeout=30) as response:
                return response.status
        except urllib.error.HTTPError as exc:
            return exc.code

    assert login("wrong") == 400 and _status(f"{base}/config", browser) == 401
    assert login("s3cret-pass") == 200 and _status(f"{base}/config", browser) == 200


def test_cl_ui_binds_the_dagster_ui_and_the_chat_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`cl ui` / `cl up`: the processes it starts are told to listen on 127.0.0.1 only."""
    from cl_assets import launcher

    started: list[tuple[str, list[str], str]] = []

    class Exited:
        returncode = 0

        def poll(self) -> int:
            return 0

    def fake_start(name: str, argv: list[str], url: str, env: dict[str, str], cwd: Path) -> Any:
        started.append((name, list(argv), url))
        return launcher.Service(name=name, process=Exited(), url=url)  # type: ignore[arg-type]

    monkeypatch.setattr(launcher, "start", fake_start)
    monkeypatch.setattr(launcher, "stop", lambda services, grace_s=20.0: None)
    launcher.serve(make_settings(tmp_path), dagster_port=3999, chat_port=7999)
    (ui_name, ui_argv, ui_url), (chat_name, chat_argv, chat_url) = started
    assert ui_argv[ui_argv.index("-h") + 1] == "127.0.0.1" and ui_url.startswith("http://127.0.0.1:3999/")
    assert "--host" not in chat_argv and chat_url == "http://127.0.0.1:7999/"  # the chat keeps CL_CHAT_HOST
