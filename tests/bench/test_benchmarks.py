"""Smoke tests: every benchmark runs at its tiny size and produces its table rows.

No timing is asserted (figures at the tiny size mean nothing); the point is that the scripts
cannot rot. Each benchmark runs as `make bench` runs it: in its own process, with `--json`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO

BENCH = REPO / "bench"


@pytest.fixture
def bench_env(tmp_path: Path) -> dict[str, str]:
    """Bulk-written stores go to a temporary cache, not the repo's data/bench/cache."""
    return {**os.environ, "CL_BENCH_CACHE": str(tmp_path / "cache")}


def run_bench(name: str, tmp_path: Path, env: dict[str, str], *extra: str) -> dict[str, Any]:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), "--size", "tiny", "--json", str(out), *extra],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Against the targets" in proc.stdout  # the printed table
    return json.loads(out.read_text(encoding="utf-8"))


def table(result: dict[str, Any], starts: str) -> dict[str, Any]:
    return next(t for t in result["tables"] if t["title"].startswith(starts))


def first_column(t: dict[str, Any]) -> list[str]:
    return [str(row[0]) for row in t["rows"]]


def test_ingestion(tmp_path: Path, bench_env: dict[str, str]) -> None:
    result = run_bench("ingestion", tmp_path, bench_env)
    accuracy = table(result, "Recall and false positives")
    corpora = set(first_column(accuracy))
    assert {"generated", "presidio synth_dataset_v2", "presidio recognizer vectors"} <= corpora
    systems = [row[1] for row in table(result, "Throughput")["rows"]]
    assert any("Presidio" in s for s in systems) and any("sanitize + store" in s for s in systems)
    assert any("sanitizer removed (ceiling)" in s for s in systems)
    assert table(result, "Where `import_jsonl`'s time goes")["rows"]
    assert any("≥ 50×" == c["target"] for c in result["checks"])


def test_curation(tmp_path: Path, bench_env: dict[str, str]) -> None:
    result = run_bench("curation", tmp_path, bench_env)
    runs = table(result, "`curate_snapshot` end to end")["rows"]
    assert [r[0].split(" ")[0] for r in runs] == ["CL", "CL,", "baseline:"]  # without and with context
    assert all(r[3] > 0 and r[5] > 0 for r in runs)  # wall seconds and peak RSS were measured
    assert table(result, "Phases at")["rows"]


def test_sensor(tmp_path: Path, bench_env: dict[str, str]) -> None:
    result = run_bench("sensor", tmp_path, bench_env)
    rows = table(result, "Milliseconds per tick")["rows"]
    assert rows and rows[0][0] == 2_000


def test_training(tmp_path: Path, bench_env: dict[str, str], tiny_model_dir: Path) -> None:
    result = run_bench("training", tmp_path, bench_env, "--model", str(tiny_model_dir))
    assert first_column(table(result, "Matmul throughput")) == ["float32", "bfloat16"]
    recipes = first_column(table(result, "LoRA SFT on"))
    assert len(recipes) == 4 and recipes[0].startswith("straightforward")
    assert any(c["figure"].startswith("MFU") for c in result["checks"])
    runs = result["data"]["runs"]
    # Padding-free batches are the padded random batches without the padding: the same loss.
    shipped, baseline = runs["CL as shipped (padding-free)"], runs["straightforward (fp32, random batches, padding)"]
    assert shipped["final_loss"] == pytest.approx(baseline["final_loss"], rel=1e-3)


def test_chat(tmp_path: Path, bench_env: dict[str, str], tiny_model_dir: Path) -> None:
    result = run_bench("chat", tmp_path, bench_env, "--model", str(tiny_model_dir))
    states = first_column(table(result, "Generation through"))
    assert states[0] == "no adapter (base model)" and states[2].startswith("after hot-swap")
    ops = first_column(table(result, "Swap vs reload"))
    assert any(o.startswith("full reload") for o in ops) and any("hot-swap" in o for o in ops)
    paths = first_column(table(result, "One stream with adapter A"))
    assert paths[0].startswith("**CL engine as shipped") and any(p.startswith("transformers") for p in paths)
    assert any("CL_CHAT_DTYPE=float32" in p for p in paths) and any("CL_CHAT_DTYPE=bfloat16" in p for p in paths)
    assert any(n.startswith("Serving precision: `CL_CHAT_DTYPE=float32` → **float32** (set)") for n in result["notes"])
    clients = table(result, "Concurrent clients")
    assert {(str(r[0]), r[1]) for r in clients["rows"]} == {(n, m) for n in ("1", "2") for m in ("batched", "one at a time")}


def test_precision(tmp_path: Path, bench_env: dict[str, str], tiny_model_dir: Path) -> None:
    result = run_bench("precision", tmp_path, bench_env, "--model", str(tiny_model_dir))
    outside = table(result, "outside (packages' facts, unscreened)")
    assert first_column(outside) == ["float32", "bfloat16", "int4"]
    assert outside["rows"][0][2] == 0 and outside["rows"][0][3] == 0  # float32 against itself
    assert table(result, "shipped general set")["rows"]
    assert set(result["data"]["step_ms"]) == {"float32", "bfloat16", "int4"}


def test_run_all_writes_the_doc(tmp_path: Path, bench_env: dict[str, str]) -> None:
    doc = tmp_path / "benchmarks.md"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run_all.py"), "--size", "tiny", "--only", "sensor", "--doc", str(doc)],
        cwd=REPO, env=bench_env, capture_output=True, text=True, timeout=600, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = doc.read_text(encoding="utf-8")
    for heading in ("## Machine", "## Every figure against its target", "## 3. Sensor tick"):
        assert heading in text
    assert "| torch |" in text and "| CPU |" in text


# --------------------------------------------------------------------------- the data generators


@pytest.fixture
def bench_modules(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setenv("CL_BENCH_CACHE", str(tmp_path / "cache"))


def test_generated_pii_corpus_is_labelled_exactly(bench_modules: None) -> None:
    import pii_corpus

    from cl_assets.core.pii import find_pii

    corpus = pii_corpus.generated_corpus(300, seed=3)
    kinds = {kind for item in corpus for _, _, kind in item.spans}
    assert kinds == set(pii_corpus.ALL_TYPES)
    for item in corpus:
        for start, end, kind in item.spans:
            value = item.text[start:end]
            assert value == value.strip() and value
            if kind in ("CREDIT_CARD", "IBAN_CODE"):  # checksummed: CL's validators must accept every one
                assert [(f.start, f.end) for f in find_pii(value)] == [(0, len(value))], value
    assert pii_corpus.generated_corpus(50, seed=3)[0].text == corpus[0].text  # seeded


def test_bulk_written_store_curates_like_one_filled_through_the_store_api(bench_modules: None, tmp_path: Path) -> None:
    import store_data

    from cl_assets.core.curation import curate_frame, load_interactions
    from cl_assets.core.store import Store
    from tests.conftest import make_settings

    rows, _ = store_data.generate_rows(1_500, seed=5)
    bulk = tmp_path / "bulk.db"
    store_data.write_store(bulk, 1_500, seed=5)
    api = Store(f"sqlite:///{tmp_path / 'api.db'}")
    api.insert_interactions(store_data.as_api_rows(rows))
    settings = make_settings(tmp_path)
    counts = []
    for store in (Store(f"sqlite:///{bulk}"), api):
        frame = load_interactions(store)
        out, count = curate_frame(frame, settings)
        counts.append((count, out.to_dicts()))
        store.close()
    assert counts[0] == counts[1]
    assert counts[0][0]["final"] > 0
