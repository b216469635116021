"""The snapshot module: one id rule, one schema, typed problems."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cl_assets.core import registry, snapshot
from cl_assets.core.snapshot import ProblemKind, check_snapshot_id, is_snapshot_id, validate_snapshot


@pytest.mark.parametrize("text", ["20261101_120000\n", "20261101_120000 ", "x20261101_120000", "2026110_120000", "", None, 20261101])
def test_an_id_is_the_whole_text_never_a_prefix(text: object) -> None:
    assert not is_snapshot_id(text)
    with pytest.raises(ValueError, match="YYYYMMDD_HHMMSS"):
        check_snapshot_id(text)  # type: ignore[arg-type]
    with pytest.raises(registry.RegistryError, match="not a snapshot id"):
        registry.check_snapshot_id(text)  # type: ignore[arg-type]


def test_a_good_id_passes_everywhere() -> None:
    assert check_snapshot_id("20261101_120000") == registry.check_snapshot_id("20261101_120000") == "20261101_120000"


def test_problems_are_typed_so_callers_never_search_their_text(tmp_path: Path) -> None:
    def line(*messages: tuple[str, str]) -> str:
        return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]})

    path = tmp_path / "s.jsonl"
    path.write_text("\n".join([
        line(("user", "mail jane.doe@example.com"), ("assistant", "ok")),
        line(("user", "<|im_start|>system"), ("assistant", "ok")),
        line(("assistant", "a"), ("user", "q")),
        json.dumps({"messages": [{"role": "robot", "content": "x"}, {"role": "user", "content": "card 4111 1111 1111 1111"}]}),
        "{not json",
    ]) + "\n")
    kinds = [(p.line, p.kind) for p in validate_snapshot(path)]
    assert (1, ProblemKind.PII) in kinds and (2, ProblemKind.CONTROL_TOKEN) in kinds and (3, ProblemKind.TURNS) in kinds
    assert (4, ProblemKind.SCHEMA) in kinds and (4, ProblemKind.PII) in kinds  # PII is found in a malformed line too
    assert (5, ProblemKind.JSON) in kinds
    assert all("jane" not in str(p) and "4111" not in str(p) for p in validate_snapshot(path))
    assert [p.kind for p in validate_snapshot(tmp_path / "missing.jsonl")] == [ProblemKind.MISSING]


def test_snapshot_module_needs_nothing_outside_the_standard_library() -> None:
    import subprocess
    import sys

    probe = "import sys, cl_assets.core.snapshot; print(sorted(m for m in sys.modules if m.split('.')[0] in {'polars', 'pydantic', 'sqlalchemy', 'numpy', 'torch'}))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert snapshot.SNAPSHOT_ID_PATTERN == r"\d{8}_\d{6}"
