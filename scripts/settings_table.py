"""Rewrite the settings table in README.md from the Settings model (run after adding a setting)."""

from __future__ import annotations

import re
from pathlib import Path

from cl_assets.settings import Settings

README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- settings:start -->", "<!-- settings:end -->"


def table() -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "project folder" if field.default_factory is not None else field.default
        shown = "—" if default is None else f"`{default}`"
        rows.append(f"| `CL_{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows)


def main() -> None:
    text = README.read_text(encoding="utf-8")
    block = f"{START}\n{table()}\n{END}"
    text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    README.write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
