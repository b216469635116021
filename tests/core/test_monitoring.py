"""Quality metrics per adapter version: counts, helpful rate, percentiles, plots."""

from __future__ import annotations

import json

from cl_assets.core.ingest import Ingestor
from cl_assets.core.monitoring import ratings_for, write_quality_metrics
from cl_assets.settings import Settings


def test_empty_store_gives_empty_metrics_and_plots(settings: Settings) -> None:
    ingestor = Ingestor(settings)
    summary, plots = write_quality_metrics(settings, ingestor.store)
    assert summary["total"] == 0 and summary["per_adapter"] == []
    assert all(p.stat().st_size > 0 for p in plots.values())


def test_rates_per_adapter_with_rows_missing_timings_first(settings: Settings) -> None:
    ingestor = Ingestor(settings)
    for i in range(150):  # imported rows: no timings, base model
        done = ingestor.ingest_interaction(id=f"b{i}", prompt=f"q{i}", response="a", timestamp="2026-11-01T10:00:00Z")
        if i < 10:
            ingestor.record_feedback(done.id, i < 5)
    for i in range(4):  # chat rows served by an adapter, with timings
        done = ingestor.ingest_interaction(id=f"c{i}", prompt=f"p{i}", response="a", adapter_version="20261102_000000",
                                           latency_ms=100.0 * (i + 1), tokens_per_s=20.0, timestamp="2026-11-02T10:00:00Z")
        ingestor.record_feedback(done.id, i != 0)
    summary, _ = write_quality_metrics(settings, ingestor.store)
    per = {r["adapter"]: r for r in summary["per_adapter"]}
    assert per["base"]["interactions"] == 150 and per["base"]["rated"] == 10 and per["base"]["helpful_rate"] == 0.5
    assert per["20261102_000000"]["helpful_rate"] == 0.75 and per["20261102_000000"]["latency_p50_ms"] in (200.0, 300.0)
    assert {d["day"] for d in summary["daily"]} == {"2026-11-01", "2026-11-02"}
    assert json.loads(settings.feedback_metrics_path.read_text())["total"] == 154
    assert ratings_for(ingestor.store, None).rated == 10
    assert ratings_for(ingestor.store, "20261102_000000").helpful == 3
