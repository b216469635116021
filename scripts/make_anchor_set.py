"""Build the anchor set of the configured base model into the checkout's `data/anchors/`.

The `base_anchor` asset builds the same file on first use (`cl_assets/core/anchor.py`); the
repository ships the one of the embedded SmolLM2 so that a fresh home (and `cl demo`) does not
spend minutes of CPU on it. Run this after changing the base model, the system prompt, the
evaluation sets or the anchor settings, and commit the new folder:

    .venv/bin/python scripts/make_anchor_set.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    from cl_assets.core.cycle import ensure_anchor
    from cl_assets.core.model import ensure_base_model
    from cl_assets.settings import get_settings

    settings = get_settings().model_copy(update={"data_dir": REPO / "data"})
    started = time.perf_counter()
    path = ensure_anchor(
        settings,
        ensure_base_model(settings),
        lambda stage, done, total: print(f"  {stage} {done}/{total} ({time.perf_counter() - started:.0f} s)", flush=True),
    )
    print(f"anchor set: {path}" if path else "CL_ANCHOR_ROWS=0: nothing to build")


if __name__ == "__main__":
    main()
