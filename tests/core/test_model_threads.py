"""OpenMP workers are handed back by threads that stop computing (see `cl_assets.core.model.threads`).

A thread's OpenMP pool shows as OS threads of the process, so the tests count the threads of
`/proc/self/task` that were not there before (by id: a thread that an earlier test left behind
may end meanwhile, which a plain count would take for a worker going).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cl_assets.core import model as M
from cl_assets.core.model.batching import BatchedStream, BatchScheduler
from cl_assets.core.model.threads import release_openmp_threads

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir() or torch.get_num_threads() < 2,
    reason="needs Linux and at least two torch threads (an OpenMP pool of its own)",
)


def _threads() -> set[str]:
    return set(os.listdir("/proc/self/task"))


def _parallel_op() -> None:
    x = torch.randn(512, 512)
    (x @ x).sum().item()  # big enough for a parallel region


def _new(baseline: set[str]) -> int:
    """How many threads exist now that were not in `baseline`."""
    return len(_threads() - baseline)


def _settle(baseline: set[str], expected: int, timeout_s: float = 10.0) -> int:
    """`_new(baseline)` once it reaches `expected`, or when `timeout_s` ran out."""
    deadline = time.monotonic() + timeout_s
    while _new(baseline) != expected and time.monotonic() < deadline:
        time.sleep(0.02)
    return _new(baseline)


def test_release_frees_the_calling_threads_workers() -> None:
    release_openmp_threads()
    baseline = _threads()
    _parallel_op()
    assert _new(baseline) > 0  # the pool's workers exist while the thread may compute again
    assert release_openmp_threads() is True
    assert _settle(baseline, 0) == 0
    _parallel_op()  # and torch makes them again when needed
    assert _new(baseline) > 0
    release_openmp_threads()


def test_an_idle_batch_scheduler_holds_no_openmp_workers(tiny_model_dir: Path) -> None:
    tiny = M.load_base_model(tiny_model_dir)
    release_openmp_threads()
    baseline = _threads()

    @contextlib.contextmanager
    def turn(adapter_id: str | None) -> Iterator[object]:
        _parallel_op()  # the scheduler thread computes in parallel, as a real model's step does
        yield tiny.model

    scheduler = BatchScheduler(tiny.tokenizer, turn)
    stream = BatchedStream(scheduler, None, tiny.model, tiny.tokenizer, [{"role": "user", "content": "Hi"}],
                           max_new_tokens=4, temperature=0.0)  # fmt: skip
    "".join(stream)
    assert stream.result.completion_tokens >= 1
    # Only the scheduler thread itself stays: its OpenMP workers went when it fell idle.
    assert _settle(baseline, 1) == 1
