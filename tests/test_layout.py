"""The layout's rules: domain code imports neither Dagster nor Gradio, SQL stays in the store,
the platform never depends on the chat, and no module imports one that imports it back."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

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


WEB = {"dagster", "gradio", "fastapi", "starlette", "uvicorn"}


def test_the_chat_engine_and_the_api_contract_import_no_web_framework() -> None:
    """The engine and `cl_chat.completions` hold the chat's and the API's rules; only
    `cl_chat.app`, `cl_chat.api` and `cl_chat.server` may bring Gradio, FastAPI or uvicorn."""
    probe = (
        "import sys, cl_chat.engine, cl_chat.completions; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {sorted(WEB)!r}))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"


def test_readme_documents_every_setting() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    missing = [name for name in Settings.model_fields if f"`CL_{name.upper()}`" not in readme]
    assert missing == []


# -- the import graph of the project's own modules, read from the source ----------------------

PACKAGES = ("cl_assets", "cl_chat")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules `name` imports anywhere (top level, in functions, under TYPE_CHECKING).

    `from package import submodule` names the submodule; importing a module is not counted as
    importing its parent packages (Python runs those first, but they are not what the code asks for).
    """
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
        for target in targets:
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in modules and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles_among_project_modules() -> None:
    graph = _graph()
    assert len(graph) > 40 and "cl_assets.core.snapshot" in graph
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_platform_imports_the_chat_only_in_its_cli() -> None:
    importers = {name for name, imported in _graph().items() if name.startswith("cl_assets") and any(i.startswith("cl_chat") for i in imported)}
    assert importers <= {"cl_assets.cli"}


def test_layers_point_down_only() -> None:
    """core knows nothing above it; the Dagster glue never reaches for the assembly, the CLI or the launcher."""
    above_core = ("cl_assets.defs", "cl_assets.definitions", "cl_assets.cli", "cl_assets.launcher", "cl_chat")
    above_defs = ("cl_assets.definitions", "cl_assets.cli", "cl_assets.launcher", "cl_chat")
    wrong = []
    for name, imported in _graph().items():
        for target in imported:
            if (name.startswith("cl_assets.core") and target.startswith(above_core)) or (
                name.startswith("cl_assets.defs") and target.startswith(above_defs)
            ):
                wrong.append(f"{name} -> {target}")
    assert wrong == []


_SQL = re.compile(r"^\s*(from|import)\s+sqlalchemy\b|\btext\(", re.MULTILINE)


def test_sql_stays_in_the_store() -> None:
    """`sqlalchemy` imports and `text(` only in core/store/ (and the Alembic migrations)."""
    allowed = (REPO / "cl_assets" / "core" / "store", REPO / "cl_assets" / "migrations")
    offenders = [
        str(path.relative_to(REPO))
        for package in PACKAGES
        for path in (REPO / package).rglob("*.py")
        if not any(path.is_relative_to(folder) for folder in allowed) and _SQL.search(path.read_text(encoding="utf-8"))
    ]
    assert offenders == []
    assert _SQL.search("    from sqlalchemy import select\n") and _SQL.search('conn.execute(text("SELECT 1"))')


def test_the_readme_and_architecture_page_name_only_files_that_exist() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    core = readme[readme.index("- `cl_assets/core/` — "):readme.index("- `cl_assets/defs/` — ")]
    named = re.findall(r"`(\w+(?:\.py|/))`", core)
    assert len(named) > 10
    assert [n for n in named if not (REPO / "cl_assets" / "core" / n).exists()] == []
    page = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    paths = set(re.findall(r"`((?:cl_assets|cl_chat|tests)/[\w/.<>-]+)`", page))
    assert len(paths) > 5
    assert [p for p in paths if "<" not in p and not (REPO / p).exists()] == []
