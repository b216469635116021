"""Would a compiled multi-pattern engine make `sanitize` faster? A separate tool, not in `make bench`.

Needs `pip install hyperscan google-re2` (not project dependencies: neither won). Times, per
text and in one process: `sanitize`; `sanitize` on the texts that hold no trigger at all (no
run of digits, "@", "::", escape or secret keyword), which a prefilter could skip; and that
prefilter itself in stdlib `re`, RE2, Hyperscan (one database, one scan per text) and Polars
(Rust regex over the whole batch). The saving a prefilter can bring is the trigger-free
share times (their `sanitize` cost minus the prefilter's); the rest of the time is spent
validating candidates in Python, which no regex engine removes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from faker_corpus import faker_corpus
from pii_corpus import generated_corpus, synth_dataset

from cl_assets.core.pii import sanitize
from cl_assets.core.pii.phones import clear_caches

TRIGGERS = [
    r"[0-9][-0-9(). /+]{3,}[0-9]", r"@", r"::", r"sk-|_|xox|eyJ|glpat-|AKIA|ASIA|AIza|-----BEGIN ",
    r"[Bb](?:earer|EARER|asic|ASIC)", r"key|secret|token|pass|pwd|credential|KEY|SECRET|TOKEN|PASS", r"\\|&|%",
]  # fmt: skip


def best_of(f: Callable[[], object], n: int = 3) -> float:
    best = float("inf")
    for _ in range(n):
        clear_caches()
        started = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    import hyperscan
    import polars as pl
    import re2

    pattern = "|".join(TRIGGERS)
    py, r2 = re.compile(pattern), re2.compile(pattern)
    db = hyperscan.Database()
    db.compile(expressions=[t.encode() for t in TRIGGERS], ids=list(range(len(TRIGGERS))), elements=len(TRIGGERS),
               flags=[hyperscan.HS_FLAG_SINGLEMATCH] * len(TRIGGERS))

    def hs_any(data: bytes) -> bool:
        found: list[int] = []
        try:
            db.scan(data, match_event_handler=lambda i, *_: found.append(i) or True)  # stop at the first
        except hyperscan.ScanTerminated:
            pass
        return bool(found)

    print("| corpus | texts | sanitize µs/text | trigger-free texts | their sanitize µs | re | RE2 | Hyperscan | "
          "Polars batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, corpus in [("generated", generated_corpus(4000)), ("presidio synth_dataset_v2", synth_dataset()),
                         ("faker", faker_corpus(3000))]:
        texts = [item.text for item in corpus]
        encoded = [t.encode() for t in texts]
        free = [t for t in texts if not py.search(t)]
        per = 1e6 / len(texts)
        whole = best_of(lambda: [sanitize(t) for t in texts]) * per
        free_us = best_of(lambda: [sanitize(t) for t in free]) * 1e6 / max(1, len(free))
        re_us = best_of(lambda: [py.search(t) for t in texts]) * per
        re2_us = best_of(lambda: [r2.search(t) for t in texts]) * per
        hs_us = best_of(lambda: [hs_any(b) for b in encoded]) * per
        pl_us = best_of(lambda: pl.Series(texts).str.contains(pattern).to_list()) * per
        print(f"| {name} | {len(texts):,} | {whole:.1f} | {len(free):,} | {free_us:.1f} | {re_us:.2f} | {re2_us:.2f} | "
              f"{hs_us:.2f} | {pl_us:.2f} |")


if __name__ == "__main__":
    main()
