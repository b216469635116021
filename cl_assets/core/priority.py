"""Run training at a lower CPU priority than the chat that shares the machine.

On Linux the nice value belongs to a thread, not a process: `os.nice` and
`os.setpriority(os.PRIO_PROCESS, 0, n)` change only the calling thread, and a thread takes its
creator's value when it starts. So the training thread is lowered, and when it is its process's
main thread (a Dagster run worker, `cl` in a terminal) every thread already running in the
process is lowered too: torch's intra-op workers may have started before training did.
A thread of a serving process (the chat) never lowers its neighbours.
"""

from __future__ import annotations

import logging
import os
import threading

log = logging.getLogger(__name__)


def thread_nice(tid: int = 0) -> int:
    """The nice value of thread `tid` (0: the calling one)."""
    return os.getpriority(os.PRIO_PROCESS, tid)


def lower_cpu_priority(nice: int) -> list[int]:
    """Raise the nice value of the calling thread (and of its process when it is the main
    thread) to at least `nice`; 0 does nothing. Never raises the priority (that needs root).
    Returns the thread ids changed."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return []
    tids = [0]
    if threading.current_thread() is threading.main_thread() and os.path.isdir("/proc/self/task"):
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    changed = []
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
                changed.append(tid)
        except (ProcessLookupError, PermissionError) as exc:  # a thread that just ended; a locked-down box
            log.debug("nice %s for thread %s: %s", nice, tid, exc)
    if changed:
        log.info("Training runs at nice %d (%d thread(s) lowered)", nice, len(changed))
    return changed
