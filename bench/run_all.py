"""Run all five benchmarks and rewrite `docs/benchmarks.md` (`make bench`).

Each benchmark runs in its own fresh process (`bench/<name>.py --size full --json ...`), one
after the other, so none inherits another's memory, threads or imports. `--quick` runs the
`small` sizes (minutes, figures not judged where the target is about the full size);
`--only ingestion,chat` runs a subset (the doc then holds only those). A benchmark that
fails is reported in the doc with its error and the command exits non-zero at the end.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
from common import REPO, Result, Table, machine_info, verdict

BENCHMARKS = ["ingestion", "curation", "sensor", "training", "chat"]
DOC = REPO / "docs" / "benchmarks.md"


def run_one(name: str, size: str, out: Path) -> tuple[Result | None, str]:
    started = time.perf_counter()
    proc = subprocess.run(  # noqa: PLW1510 - a failure is reported in the doc, not raised
        [sys.executable, str(REPO / "bench" / f"{name}.py"), "--size", size, "--json", str(out)],
        cwd=REPO, capture_output=True, text=True,
    )
    seconds = time.perf_counter() - started
    sys.stdout.write(proc.stdout)
    sys.stdout.flush()
    if proc.returncode != 0 or not out.is_file():
        return None, f"exit code {proc.returncode} after {seconds:.0f} s:\n{proc.stderr[-3000:]}"
    return Result.from_json(json.loads(out.read_text(encoding="utf-8"))), ""


def render(results: dict[str, Result | str], before: dict[str, Any], after: dict[str, Any], size: str) -> str:
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        "# Benchmarks",
        "",
        f"Written by `bench/run_all.py` (`make bench`) on {now}, size `{size}`. Each benchmark compares CL with its "
        "baseline in the same run; see `bench/README.md` for what each measures and how to rerun one.",
        "",
    ]
    # Only the load before the run tells of neighbours: the one after includes the benchmarks' own threads.
    busy = before["load_avg"][0]
    if busy > 0.5 * (before.get("cores") or 1):
        lines += [
            f"> ⚠️ The machine was busy while these figures were taken (1-minute load average {before['load_avg'][0]} "
            f"before, {after['load_avg'][0]} after, on {before['cores']} cores): absolute timings are inflated; the "
            "side-by-side ratios are the figures to read.",
            "",
        ]
    lines += ["## Machine", ""]
    machine = Table("", ["", "this run"])
    machine.add("CPU", f"{before['cpu']} ({before['cores']} cores; {', '.join(before['matrix_extensions']) or 'no AMX/AVX-512 BF16'})")
    machine.add("RAM", f"{before['ram_gib']} GiB")
    machine.add("load average (1/5/15 min) before → after", f"{before['load_avg']} → {after['load_avg']}")
    machine.add("OS, Python", f"{before['os']}, Python {before['python']}")
    machine.add("torch", f"{before.get('torch')} ({before.get('torch_threads')} threads, CUDA: {before.get('cuda')})")
    machine.add("libraries", ", ".join(f"{k} {before[k]}" for k in (
        "transformers", "peft", "trl", "accelerate", "polars", "sqlalchemy", "dagster", "presidio-analyzer",
        "presidio-anonymizer", "datasketch", "numpy") if k in before))
    lines += machine.markdown().split("\n")[2:] + [""]

    lines += ["## Every figure against its target", ""]
    summary = Table("", ["benchmark", "figure", "value", "target", ""])
    for name, res in results.items():
        if isinstance(res, str):
            summary.add(name, "benchmark failed", "see below", "", "❌")
            continue
        for c in res.checks:
            summary.add(res.title.split(":")[0], c.figure, c.value, c.target, verdict(c.ok))
    lines += summary.markdown().split("\n")[2:] + ["", "✅ met · ❌ missed · — not judged at this size / informational", ""]

    for name, res in results.items():
        if isinstance(res, str):
            lines += [f"## {name}", "", "The benchmark failed:", "", "```", res.strip(), "```", ""]
            continue
        lines += [f"## {res.title}", "", f"`python bench/{name}.py --size {res.size}` — {res.seconds:.0f} s.", ""]
        lines += [res.markdown(), ""]
        for label, text in res.profiles.items():
            lines += [f"<details><summary>Profile: {label}</summary>", "", "```", text.rstrip(), "```", "", "</details>", ""]
    lines += [
        "## Reproduce",
        "",
        "```",
        "make bench                                   # all five at full size, rewrites this file",
        ".venv/bin/python bench/run_all.py --quick    # small sizes",
        ".venv/bin/python bench/curation.py --size full",
        "```",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes instead of full")
    parser.add_argument("--size", choices=common.SIZES, help="override the size (tiny: smoke runs)")
    parser.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    parser.add_argument("--doc", type=Path, default=DOC, help="where to write the markdown (default docs/benchmarks.md)")
    args = parser.parse_args()
    size = args.size or ("small" if args.quick else "full")
    names = [n.strip() for n in args.only.split(",")] if args.only else BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")

    before = machine_info()
    results: dict[str, Result | str] = {}
    with tempfile.TemporaryDirectory(prefix="cl-bench-") as tmp:
        for name in names:
            print(f"\n=== {name} ({size}) ===", flush=True)
            res, error = run_one(name, size, Path(tmp) / f"{name}.json")
            results[name] = res if res is not None else error
            if res is None:
                print(f"{name} FAILED: {error}", file=sys.stderr)
    after = machine_info()
    args.doc.parent.mkdir(parents=True, exist_ok=True)
    args.doc.write_text(render(results, before, after, size), encoding="utf-8")
    print(f"\nwrote {args.doc}")
    return 1 if any(isinstance(r, str) for r in results.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
