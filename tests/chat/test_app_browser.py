"""The web chat in a real browser with the real SmolLM2: ask, stream, 👍, and check the store."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cl_assets.settings import Settings
from tests.conftest import fail_in_ci_else_skip, make_settings
from tests.helpers import free_port, wait_for

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def words(text: str) -> str:
    return " ".join(re.findall(r"\w+", text))


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        fail_in_ci_else_skip(f"{CHROMIUM} is missing (apt-get install -y chromium; `make test` does it)")
    return CHROMIUM


@pytest.fixture
def served(tmp_path: Path, smollm2_dir: Path) -> Iterator[tuple[str, Any, Settings]]:
    """The app on a free 127.0.0.1 port, in this process (Gradio's server thread)."""
    from cl_chat.server import launch
    from cl_chat.engine import ChatEngine

    settings = make_settings(tmp_path, max_new_tokens=32)
    engine = ChatEngine(settings, model=smollm2_dir)
    port = free_port()
    demo = launch(engine, settings, "127.0.0.1", port, block=False)
    try:
        yield f"http://127.0.0.1:{port}/", engine, settings
    finally:
        demo.close()


def test_chat_in_the_browser_streams_records_a_like_and_a_retry(chromium: Path, served: tuple[str, Any, Settings], tmp_path: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    url, engine, _ = served
    store = engine.store
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            page.goto(url)
            expect(page.locator("#adapter-badge")).to_contain_text("base model", timeout=30_000)
            box = page.get_by_placeholder("Type a message and press Enter")
            box.fill("Hi, my email is jane.doe@example.com. What is the capital of France?")
            box.press("Enter")

            reply = page.locator('[data-testid="bot"]').first
            expect(reply).not_to_be_empty(timeout=60_000)  # the first tokens are streamed in
            row = wait_for(lambda: next(iter(store.iter_interactions()), None), what="the logged turn")
            # The whole answer arrived (compared without the symbols Markdown rendering eats).
            wait_for(lambda: words(reply.inner_text()) == words(row.response), timeout=15, what="the whole answer on the page")

            page.get_by_role("button", name="Like", exact=True).first.click()
            wait_for(lambda: store.get_interaction(row.id).helpful is True, timeout=15, what="the 👍 in the store")
            page.screenshot(path=str(tmp_path / "chat.png"), full_page=True)

            page.get_by_role("button", name="Retry", exact=True).first.click()  # implicit 👎 on the replaced answer
            wait_for(lambda: store.count_interactions() == 2, what="the regenerated turn")
            expect(page.locator('[data-testid="bot"]')).to_have_count(1)
        finally:
            browser.close()

    stored = store.get_interaction(row.id)
    assert stored.prompt == "Hi, my email is [EMAIL]. What is the capital of France?"
    assert "jane.doe" not in stored.prompt and "EMAIL" in stored.pii_types
    assert stored.helpful is True and stored.source == "chat" and stored.adapter_version is None
    assert stored.regenerated is True
    assert stored.session_id and stored.user_hash and stored.completion_tokens > 0
    assert (tmp_path / "chat.png").stat().st_size > 10_000
