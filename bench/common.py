"""Shared pieces of the benchmarks: sizes, the command line, result records, tables, the machine.

Every benchmark module has `run(size, **options) -> Result` and ends with `main(run)`, so it
can be started on its own (`python bench/<name>.py --size small`) and by `bench/run_all.py`,
which starts each in a fresh process with `--json` and renders all results into
`docs/benchmarks.md`.

Sizes: `tiny` (the smoke tests: seconds, no meaningful figures), `small` (development and
`run_all.py --quick`), `full` (the figures in the doc).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Presidio's email recognizer would otherwise fetch the public suffix list on first use.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
SHARED_DATA = Path(os.environ.get("CL_SHARED_DATA", REPO.parent / "shared" / "data"))
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

SIZES = ("tiny", "small", "full")


# --------------------------------------------------------------------------- results


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def add(self, *values: Any) -> None:
        if len(values) != len(self.columns):
            raise ValueError(f"{self.title}: {len(values)} values for {len(self.columns)} columns")
        self.rows.append(list(values))

    def markdown(self) -> str:
        head = "| " + " | ".join(self.columns) + " |"
        rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(self.columns))) + "|"
        body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in self.rows]
        return "\n".join([f"**{self.title}**", "", head, rule, *body])


@dataclass
class Check:
    """One figure against its target."""

    figure: str
    value: str
    target: str
    ok: bool | None  # None: not judged (e.g. at a size the target is not about)


@dataclass
class Result:
    name: str
    title: str
    size: str
    tables: list[Table] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    profiles: dict[str, str] = field(default_factory=dict)  # label -> profile text (for misses)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures for anyone who wants them
    seconds: float = 0.0

    def table(self, title: str, columns: Iterable[str]) -> Table:
        t = Table(title, list(columns))
        self.tables.append(t)
        return t

    def check(self, figure: str, value: str, target: str, ok: bool | None) -> None:
        self.checks.append(Check(figure, value, target, ok))

    def markdown(self) -> str:
        parts = [t.markdown() for t in self.tables]
        if self.checks:
            checks = Table("Against the targets", ["figure", "value", "target", ""])
            for c in self.checks:
                checks.add(c.figure, c.value, c.target, verdict(c.ok))
            parts.append(checks.markdown())
        if self.notes:
            parts.append("\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Result:
        obj = dict(obj)
        obj["tables"] = [Table(**t) for t in obj.get("tables", [])]
        obj["checks"] = [Check(**c) for c in obj.get("checks", [])]
        return cls(**obj)


def verdict(ok: bool | None) -> str:
    return "✅" if ok else ("—" if ok is None else "❌")


def fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "n/a"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}" if abs(value) >= 0.01 or value == 0 else f"{value:.2g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if value is None:
        return "n/a"
    return str(value)


# --------------------------------------------------------------------------- measuring


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def cpu_seconds() -> float:
    """CPU seconds of this process and of the children it has waited for (curation's reader)."""
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def peak_child_rss_mb() -> float:
    """Peak resident set size of the largest child this process has waited for (0: none)."""
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[list[float], Any]:
    """Wall seconds of each of `repeat` calls, and the last call's value."""
    times, value = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - started)
    return times, value


def median(values: Iterable[float]) -> float:
    values = list(values)
    return statistics.median(values) if values else float("nan")


def profile_text(fn: Callable[[], Any], limit: int = 18, sort: str = "tottime") -> tuple[str, Any]:
    """cProfile of one call: the `limit` functions with the most own time, as plain text."""
    profiler = cProfile.Profile()
    value = profiler.runcall(fn)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.strip_dirs().sort_stats(sort).print_stats(limit)
    text = out.getvalue()
    # Drop pstats' preamble up to the header line; keep the table.
    start = text.find("   ncalls")
    return (text[start:] if start >= 0 else text).rstrip(), value


def run_json_subprocess(args: list[str], timeout: float | None = None, env: dict[str, str] | None = None) -> Any:
    """Run `python <args>` in a fresh process that prints one JSON object on its last stdout line."""
    proc = subprocess.run(  # noqa: PLW1510 - the exit code is checked below, with stderr in the message
        [sys.executable, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if not lines:
        raise RuntimeError(f"{' '.join(args)} printed nothing; stderr:\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- the machine


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _mem_total_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def machine_info() -> dict[str, Any]:
    flags = _cpu_flags()
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "ram_gib": round(_mem_total_gib(), 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "matrix_extensions": sorted(f for f in flags if f.startswith(("amx", "avx512_bf16", "avx512_fp16", "avx_vnni"))),
        "os": platform.platform(),
        "python": platform.python_version(),
    }
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "polars", "sqlalchemy", "dagster",
                 "presidio-analyzer", "presidio-anonymizer", "datasketch", "numpy"):
        info[name] = _version(name)
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    except ImportError:
        pass
    return info


# --------------------------------------------------------------------------- command line


def main(run: Callable[..., Result], extra: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """`--size tiny|small|full`, `--json PATH` (write the result there too), plus module options."""
    parser = argparse.ArgumentParser(description=(run.__module__ and sys.modules[run.__module__].__doc__ or "").split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--json", type=Path, help="also write the result as JSON to this file")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    options = {k: v for k, v in vars(args).items() if k not in ("size", "json") and v is not None}
    started = time.perf_counter()
    result = run(args.size, **options)
    result.seconds = time.perf_counter() - started
    print(f"\n## {result.title} (size {result.size}, {result.seconds:.0f} s)\n")
    print(result.markdown())
    for label, text in result.profiles.items():
        print(f"\nprofile: {label}\n{text}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result.to_json(), indent=1, default=str) + "\n", encoding="utf-8")
    return 0
