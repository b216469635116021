"""One thread of a serving process computes at a time: release the OpenMP workers of the others.

torch's CPU kernels run on OpenMP (libgomp on Linux wheels). Every Python thread that runs a
parallel torch op gets a pool of OpenMP workers of its own, kept for the thread's lifetime.
Once a process holds more OpenMP threads than the machine has cores, libgomp stops letting its
workers spin between parallel regions and puts them to sleep instead ("throttled" waiting,
libgomp's `gomp_throttled_spin_count_var`), and a decode step is hundreds of tiny parallel
regions: on the 2-core box SmolLM2 took 61 ms a token in the chat's generation thread while
the main thread's pool (left from loading the model) existed, 30 ms once it was released
(`OMP_WAIT_POLICY=PASSIVE` reproduces the slow figure in a single thread).

So a thread that computed once and then only waits (the main thread after loading, a request
thread after a hot-swap, the batch scheduler between bursts) hands its workers back with
OpenMP 5's `omp_pause_resource_all`, which libgomp implements by freeing the calling thread's
pool. Setting `torch.set_num_threads(1)` elsewhere would not do: new threads copy torch's
process-wide setting, the generation thread included.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from pathlib import Path

log = logging.getLogger(__name__)

_OMP_PAUSE_HARD = 2  # omp_pause_resource_t: free the threads and their data


@functools.cache
def _libgomp() -> ctypes.CDLL | None:
    """The libgomp torch loaded (found by path in this process's maps), or None."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: torch uses another OpenMP (or none); nothing to release
        return None
    paths = {line.split()[-1] for line in maps.splitlines() if "libgomp" in line and line.split()[-1].startswith("/")}
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)  # already loaded: dlopen hands back the same library
            lib.omp_pause_resource_all.argtypes = [ctypes.c_int]
            return lib
        except (OSError, AttributeError):  # an old libgomp without OpenMP 5
            continue
    return None


def release_openmp_threads() -> bool:
    """Free the OpenMP worker pool of the calling thread (it is made again on its next
    parallel op). False when there is no libgomp, or when called inside a parallel region."""
    import torch  # noqa: F401 - libgomp is loaded with torch

    lib = _libgomp()
    if lib is None:
        return False
    ok = lib.omp_pause_resource_all(_OMP_PAUSE_HARD) == 0
    if not ok:
        log.debug("omp_pause_resource_all refused (inside a parallel region?)")
    return ok
