"""Sensor tick: milliseconds per `feedback_sensor` evaluation at 10k / 100k / 1M stored rows.

The tick is evaluated as in `tests/defs/test_sensors.py`: `build_sensor_context` with the
store resource, the sensor called on it. Measured three ways:

- *tick, fresh resources*: a new `StoreResource` every tick, as the Dagster daemon builds
  resources per evaluation (opens the engine and checks the schema revision each time);
- *tick, warm store*: the same context pieces, with the store already open;
- *query only*: `Store.feedback_since(cursor)`, the indexed range scan the sensor runs.

Baseline, in the same run: the straightforward query a sensor could run instead, counting
rated interactions newer than the last snapshot (`interactions.feedback_at > t`), which has
no index to use and scans the table.

The cursor sits 10 events behind the newest, so each tick finds a few new events and skips
(threshold 50): the common case. Target: flat in table size, < 50 ms per tick at 1M rows.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import common
from common import Result, median

SIZES = {
    "tiny": {"rows": [2_000], "ticks": 3},
    "small": {"rows": [10_000, 100_000], "ticks": 15},
    "full": {"rows": [10_000, 100_000, 1_000_000], "ticks": 30},
}
TARGET_MS = 50.0
SALT = "bench-salt-not-secret"


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]


def measure(db: Path, ticks: int) -> dict[str, Any]:
    from dagster import DagsterInstance, SkipReason, build_sensor_context
    from sqlalchemy import text

    from cl_assets.core.store import Store
    from cl_assets.definitions import build_definitions
    from cl_assets.defs.resources import SettingsResource, StoreResource

    with tempfile.TemporaryDirectory(prefix="cl-bench-sensor-") as tmp:
        url = f"sqlite:///{db}"
        overrides = {"user_hash_salt": SALT, "retrain_min_feedback": 50}
        config = SettingsResource(home=tmp, database_url=url, overrides_json=json.dumps(overrides))
        sensor = next(s for s in build_definitions(config).sensors if s.name == "feedback_sensor")
        store = Store(url)
        newest = store.feedback_since(0)[1]
        cursor = str(newest - 10)
        instance = DagsterInstance.ephemeral()

        def resource() -> StoreResource:
            return StoreResource(settings=SettingsResource(home=tmp, database_url=url, overrides_json=json.dumps(overrides)))

        def tick(res: StoreResource) -> Any:
            with build_sensor_context(instance=instance, cursor=cursor, resources={"store": res}) as context:
                return sensor(context)

        outcome = tick(resource())  # warm-up: imports, first connection
        assert isinstance(outcome, SkipReason), outcome
        fresh = []
        for _ in range(ticks):
            started = time.perf_counter()
            tick(resource())
            fresh.append((time.perf_counter() - started) * 1000)

        warm_res = resource()
        warm_res.get()  # open the store once
        warm = []
        for _ in range(ticks):
            started = time.perf_counter()
            tick(warm_res)
            warm.append((time.perf_counter() - started) * 1000)

        query = []
        for _ in range(ticks):
            started = time.perf_counter()
            count, _ = store.feedback_since(int(cursor))
            query.append((time.perf_counter() - started) * 1000)
        assert count == 10, count

        # Baseline: rated interactions newer than a point in time, no usable index.
        with store.engine.connect() as conn:
            moment = conn.execute(text("SELECT max(feedback_at) FROM interactions")).scalar()
            baseline = []
            for _ in range(max(3, ticks // 3)):
                started = time.perf_counter()
                conn.execute(
                    text("SELECT count(*) FROM interactions WHERE helpful IS NOT NULL AND feedback_at >= :t"),
                    {"t": moment},
                ).scalar()
                baseline.append((time.perf_counter() - started) * 1000)
        store.close()
        resource_open = []
        for _ in range(max(3, ticks // 3)):
            started = time.perf_counter()
            Store(url).close()
            resource_open.append((time.perf_counter() - started) * 1000)
    return {
        "feedback_events": newest,
        "fresh_ms": fresh, "warm_ms": warm, "query_ms": query, "baseline_ms": baseline, "store_open_ms": resource_open,
    }


def run(size: str = "small") -> Result:
    from store_data import cached_store

    cfg = SIZES[size]
    result = Result("sensor", "3. Sensor tick: feedback_sensor vs table size", size)
    table = result.table(
        f"Milliseconds per tick (median / p95 of {cfg['ticks']} ticks)",
        ["rows in store", "feedback events", "tick, fresh resources", "tick, warm store", "query only",
         "store open (engine + schema check)", "baseline: scan query"],
    )
    # Sizes are measured in interleaved rounds, so a neighbour's burst of load on a shared machine
    # does not land on one size only.
    rounds = 3 if size != "tiny" else 1
    measured: dict[int, dict[str, Any]] = {}
    for _ in range(rounds):
        for n in cfg["rows"]:
            m = measure(cached_store(n), max(1, cfg["ticks"] // rounds))
            if n in measured:
                for key, values in m.items():
                    if isinstance(values, list):
                        measured[n][key].extend(values)
            else:
                measured[n] = m
    for n in cfg["rows"]:
        m = measured[n]

        def cell(key: str, m: dict[str, Any] = m) -> str:
            return f"{median(m[key]):.1f} / {_p95(m[key]):.1f}"

        table.add(n, m["feedback_events"], cell("fresh_ms"), cell("warm_ms"), cell("query_ms"), cell("store_open_ms"),
                  cell("baseline_ms"))
    result.data = {str(k): v for k, v in measured.items()}

    biggest = max(measured)
    m = measured[biggest]
    tick_ms = median(m["fresh_ms"])
    judged = size == "full"
    result.check(f"tick at {biggest:,} rows (fresh resources, median)", f"{tick_ms:.1f} ms", f"< {TARGET_MS:.0f} ms",
                 tick_ms < TARGET_MS if judged else None)
    smallest = min(measured)
    if smallest != biggest:
        growth = tick_ms / median(measured[smallest]["fresh_ms"])
        base_growth = median(m["baseline_ms"]) / median(measured[smallest]["baseline_ms"])
        result.check(f"flat in table size ({smallest:,} → {biggest:,} rows)",
                     f"tick ×{growth:.2f} (baseline scan ×{base_growth:.0f})", "≈ ×1", growth < 1.5 if judged else None)
    if judged and tick_ms >= TARGET_MS:
        store_url = cached_store(biggest)

        def ticks() -> None:
            measure(store_url, 5)

        result.profiles["5 ticks at the largest size (cProfile, own time)"], _ = common.profile_text(ticks)
    result.notes.append(
        "Rows and feedback events are bulk-written (`store_data.py`); the sensor's query uses the primary key of "
        "`feedback_events`, so its cost does not depend on the number of interactions. Sizes are measured in "
        f"{rounds} interleaved rounds."
    )
    return result


if __name__ == "__main__":
    raise SystemExit(common.main(run))
