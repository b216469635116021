"""Quality monitoring: helpful rate per adapter version over time, latency and tokens/s.

Feeds the `quality_metrics` asset, the quality sensor and the chat's metrics tab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from cl_assets.core.files import atomic_write_text
from cl_assets.core.registry import BASE_LABEL
from cl_assets.core.store import Store, frames
from cl_assets.settings import Settings


@dataclass(frozen=True)
class RatingCount:
    rated: int
    helpful: int

    @property
    def rate(self) -> float | None:
        return self.helpful / self.rated if self.rated else None


def ratings_for(store: Store, adapter_id: str | None) -> RatingCount:
    """Explicit ratings of answers one adapter gave (None: the base model)."""
    return RatingCount(*store.ratings(adapter_id))


def load_served(store: Store) -> pl.DataFrame:
    """Interactions with the fields monitoring needs; base-model answers labelled `base`."""
    return frames.load_served(store).with_columns(pl.col("adapter_version").fill_null(BASE_LABEL).alias("adapter"))


def summarize(frame: pl.DataFrame) -> dict[str, Any]:
    """Per adapter and per day: counts, helpful rate, latency and tokens/s percentiles."""
    aggs = [
        pl.len().alias("interactions"),
        pl.col("helpful").count().alias("rated"),
        pl.col("helpful").sum().alias("helpful"),
        pl.col("regenerated").sum().alias("regenerated"),
        pl.col("helpful").mean().alias("helpful_rate"),
        pl.col("latency_ms").quantile(0.5).alias("latency_p50_ms"),
        pl.col("latency_ms").quantile(0.95).alias("latency_p95_ms"),
        pl.col("ttft_ms").quantile(0.5).alias("ttft_p50_ms"),
        pl.col("tokens_per_s").quantile(0.5).alias("tokens_per_s_p50"),
    ]
    per_adapter = frame.group_by("adapter").agg(aggs).sort("adapter")
    daily = (
        frame.with_columns(pl.col("created_at").dt.date().alias("day"))
        .group_by("adapter", "day")
        .agg(aggs)
        .sort("day", "adapter")
        .with_columns(pl.col("day").cast(pl.String))
    )
    return {"total": frame.height, "per_adapter": per_adapter.to_dicts(), "daily": daily.to_dicts()}


def plot_quality(summary: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Two PNGs: helpful rate per adapter, and latency / tokens/s per day."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    per = summary["per_adapter"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    names = [r["adapter"] for r in per]
    rates = [(r["helpful_rate"] or 0) * 100 for r in per]
    ax.bar(names, rates, color="#4C78A8")
    for x, r in enumerate(per):
        ax.annotate(f"{r['rated']} rated", (x, rates[x]), ha="center", va="bottom", fontsize=8)
    ax.set_ylabel("helpful rate (%)")
    ax.set_ylim(0, 105)
    ax.set_title("Helpful rate per adapter version")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    paths["helpful_rate"] = out_dir / "helpful_rate.png"
    fig.savefig(paths["helpful_rate"], dpi=100)
    plt.close(fig)

    daily = pl.DataFrame(summary["daily"]) if summary["daily"] else None
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    if daily is not None:
        for name in daily["adapter"].unique().sort():
            part = daily.filter(pl.col("adapter") == name)
            ax1.plot(part["day"], part["latency_p50_ms"], marker="o", label=name)
            ax2.plot(part["day"], part["tokens_per_s_p50"], marker="o", label=name)
    ax1.set_title("Latency p50 (ms) per day")
    ax2.set_title("Tokens/s p50 per day")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=30, labelsize=7)
        if daily is not None:
            ax.legend(fontsize=7)
    fig.tight_layout()
    paths["latency"] = out_dir / "latency_tokens.png"
    fig.savefig(paths["latency"], dpi=100)
    plt.close(fig)
    return paths


def write_quality_metrics(settings: Settings, store: Store) -> tuple[dict[str, Any], dict[str, Path]]:
    """Compute, write `logs/feedback_metrics.json` atomically, and plot."""
    summary = summarize(load_served(store))
    atomic_write_text(settings.feedback_metrics_path, json.dumps(summary, indent=2, default=str))
    plots = plot_quality(summary, settings.data_dir / "monitoring")
    return summary, plots
