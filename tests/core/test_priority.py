"""Training's CPU priority: the training thread (and a training process's threads) get niced."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import REPO

_CHILD = textwrap.dedent(
    """
    import json, os, threading
    from cl_assets.core.priority import lower_cpu_priority, thread_nice

    # A thread of a serving process trains: only that thread is lowered.
    seen = {"start": thread_nice()}
    def train():
        lower_cpu_priority(7)
        seen["trainer"] = thread_nice()
    worker = threading.Thread(target=train)
    worker.start(); worker.join()
    seen["main_after_thread"] = thread_nice()

    # The main thread of a training process: its threads already running are lowered too.
    parked = threading.Event()
    idle = threading.Thread(target=parked.wait)
    idle.start()
    lower_cpu_priority(12)
    seen["main"] = thread_nice()
    seen["idle"] = thread_nice(idle.native_id)
    seen["new_thread"] = []
    t = threading.Thread(target=lambda: seen["new_thread"].append(thread_nice()))
    t.start(); t.join()
    lower_cpu_priority(5)  # never raises the priority back
    seen["after_lower_request"] = thread_nice()
    parked.set(); idle.join()
    print(json.dumps(seen))
    """
)


def test_training_thread_and_process_are_niced() -> None:
    out = subprocess.run([sys.executable, "-c", _CHILD], cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    start = seen["start"]  # the child inherits the test run's own nice level
    assert seen["trainer"] == max(7, start)
    assert seen["main_after_thread"] == start  # a serving process's other threads keep their priority
    assert seen["main"] == seen["idle"] == max(12, start)
    assert seen["new_thread"] == [max(12, start)]  # threads started afterwards inherit it
    assert seen["after_lower_request"] == max(12, start)


def test_train_config_carries_the_nice_level(tmp_path: Path) -> None:
    from cl_assets.core.training import TrainConfig
    from tests.conftest import make_settings

    assert TrainConfig().nice == 10
    assert TrainConfig.from_settings(make_settings(tmp_path, train_nice=3)).nice == 3
    with pytest.raises(ValueError, match="nice"):
        TrainConfig(nice=25)
