"""The rule that matters most for the layout: domain code imports neither Dagster nor Gradio."""

from __future__ import annotations

import subprocess
import sys

from cl_assets.settings import Settings
from tests.conftest import REPO

PROBE = """
import importlib, pkgutil, sys
import cl_assets.core as core
names = [m.name for m in pkgutil.walk_packages(core.__path__, "cl_assets.core.")]
for name in names:
    importlib.import_module(name)
try:
    import cl_chat.engine  # noqa: F401
except ModuleNotFoundError as exc:
    if exc.name != "cl_chat.engine":
        raise
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"dagster", "gradio"})
print(len(names), heavy)
"""


def test_domain_code_imports_neither_dagster_nor_gradio() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, cwd=REPO)
    count, heavy = out.stdout.strip().split(" ", 1)
    assert int(count) >= 8
    assert heavy == "[]"


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"`CL_{name.upper()}`" not in readme]
    assert missing == []
