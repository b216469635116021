"""`cl export snapshot`: a registered snapshot written in the OpenAI or the ShareGPT format.

The snapshot file is already OpenAI's chat fine-tuning format (`messages`, with `weight` 0 on
assistant turns that are context only); ShareGPT's shape is written by `core.conversation`.
The file's hash is checked against the registry first, and a tainted snapshot (it held data
of a user since erased) is refused: an export must not carry erased data out of CL.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from cl_assets.core.conversation import to_sharegpt
from cl_assets.core.files import atomic_write_lines
from cl_assets.core.snapshot import check_snapshot_id, file_sha256, iter_lines
from cl_assets.core.store import Store
from cl_assets.settings import Settings

FORMATS = ("openai", "sharegpt")


class ExportError(ValueError):
    """The snapshot cannot be exported; the message says why."""


def default_export_path(settings: Settings, snapshot_id: str, fmt: str) -> Path:
    return settings.data_dir / "exports" / f"curated_{check_snapshot_id(snapshot_id)}.{fmt}.jsonl"


def export_snapshot(settings: Settings, store: Store, snapshot_id: str, fmt: str, out: Path | None = None) -> Path:
    """Write snapshot `snapshot_id` in `fmt` to `out` (atomically); returns the path written."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    snap = store.get_snapshot(check_snapshot_id(snapshot_id))
    if snap is None:
        raise ExportError(f"there is no snapshot {snapshot_id}; `cl registry list` shows them")
    if snap.tainted:
        raise ExportError(f"snapshot {snapshot_id} is tainted (it held data of an erased user); curate a new one")
    path = Path(snap.path)
    if not path.is_file() or file_sha256(path) != snap.sha256:
        raise ExportError(f"snapshot file {path} is missing or no longer matches its registered sha256")
    target = Path(out) if out is not None else default_export_path(settings, snapshot_id, fmt)

    def lines() -> Iterator[str]:
        for _, text in iter_lines(path):
            if not text.strip():
                continue
            record = json.loads(text)
            yield json.dumps(record if fmt == "openai" else to_sharegpt(record), ensure_ascii=False)

    atomic_write_lines(target, lines())
    return target
