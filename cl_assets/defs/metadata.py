"""Small helpers that turn core results into Dagster metadata (charts inline, tables)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dagster import MetadataValue, TableColumn, TableRecord, TableSchema


def image(path: Path, alt: str) -> MetadataValue:
    """A PNG shown inline in the Dagster UI (markdown with a data URI)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{data})")


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> MetadataValue:
    """A table of plain values; columns default to the first row's keys."""
    names = list(columns or (rows[0].keys() if rows else []))
    records = [TableRecord({c: _plain(r.get(c)) for c in names}) for r in rows]
    return MetadataValue.table(records, schema=TableSchema(columns=[TableColumn(c, "string") for c in names]))


def _plain(value: Any) -> str:
    text = "" if value is None else str(value)
    return text if len(text) <= 300 else text[:297] + "..."
