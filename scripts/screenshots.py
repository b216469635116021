"""Take docs/img/chat.png and docs/img/metrics.png with the real SmolLM2 and Debian's Chromium.

    .venv/bin/python scripts/screenshots.py [--out docs/img]

Works in a temporary CL home: a short conversation is typed and rated in the browser, then
the demo conversations are imported there too, so the metrics tab has data.
Nothing in the repository's data/ changes apart from the converted base model being reused.
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from cl_assets.core.ingest import Ingestor
from cl_assets.core.model import ensure_base_model
from cl_assets.settings import EMBEDDED_BASE_MODEL, Settings
from cl_chat.server import launch
from cl_chat.engine import ChatEngine

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync"]
CONVERSATION = [
    ("Hi! My email is jane.doe@example.com. What is the capital of France?", "Like"),
    ("What is the status of Lot 42?", "Dislike"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    model_dir = ensure_base_model(Settings(_env_file=None, home=REPO, base_model=EMBEDDED_BASE_MODEL))  # type: ignore[call-arg]
    home = Path(tempfile.mkdtemp(prefix="cl-screenshots-"))
    settings = Settings(_env_file=None, home=home, user_hash_salt="screenshots-only", max_new_tokens=64)  # type: ignore[call-arg]
    engine = ChatEngine(settings, model=model_dir)

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    demo = launch(engine, settings, "127.0.0.1", port, block=False)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=args.chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.goto(f"http://127.0.0.1:{port}/")
            box = page.get_by_placeholder("Type a message and press Enter")
            for number, (question, rating) in enumerate(CONVERSATION, start=1):
                before = engine.store.count_interactions()
                box.fill(question)
                box.press("Enter")
                deadline = time.monotonic() + 180
                while engine.store.count_interactions() == before:  # the turn is logged when it ends
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"no answer to {question!r} after 180 s")
                    time.sleep(0.2)
                expect(page.locator('[data-testid="bot"]')).to_have_count(number)
                page.get_by_role("button", name=rating, exact=True).last.click()
                time.sleep(0.5)
            page.mouse.move(0, 0)  # no hover highlight in the picture
            page.screenshot(path=str(args.out / "chat.png"))

            # The demo conversations (rated, without timings) join the chat turns before the metrics.
            Ingestor(settings, engine.store).import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")
            page.get_by_role("tab", name="Metrics").click()
            for plot in ("#helpful-rate-plot img", "#latency-plot img"):
                expect(page.locator(plot)).to_be_visible(timeout=60_000)
            time.sleep(1)
            page.screenshot(path=str(args.out / "metrics.png"), full_page=True)
            browser.close()
    finally:
        demo.close()
    print(f"wrote {args.out / 'chat.png'} and {args.out / 'metrics.png'} (CL home: {home})")


if __name__ == "__main__":
    main()
