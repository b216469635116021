"""The project's DAGSTER_HOME, shared by the UI (`cl ui`) and the in-process runs of the CLI."""

from __future__ import annotations

from pathlib import Path

from cl_assets.settings import Settings


def prepare_dagster_home(settings: Settings) -> Path:
    """Create the folder (telemetry off) on first use; return it."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    return home
