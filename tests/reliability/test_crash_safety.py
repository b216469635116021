"""Crash safety: a real child process is SIGKILLed while it writes a snapshot or trains an
adapter. Afterwards nothing half-done is registered or loadable, leftover temp dot-files are
ignored, and the next run of the same partition succeeds.

Each kill is deterministic: the child is patched to create a "ready" file at the chosen moment
and then to hang, and the parent kills it only once that file exists.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap
from pathlib import Path

import pytest

from cl_assets.core.snapshot import snapshot_path, validate_snapshot
from cl_assets.core.cycle import curate_partition, load_check, train_partition
from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry, RegistryError, adapter_dir
from cl_assets.core.store import Store
from cl_assets.core.training import TrainConfig
from cl_assets.settings import Settings
from tests.conftest import REPO, make_settings
from tests.reliability.support import child_env, start_python, wait_for

SID = "20261124_120000"

# The child: patch one moment to "signal ready, then hang", then run the real step.
CHILD = textwrap.dedent(
    """
    import os, time
    from contextlib import contextmanager
    from pathlib import Path

    from cl_assets.settings import Settings
    from cl_assets.core.store import Store

    ready, stage, sid = Path(os.environ["READY"]), os.environ["STAGE"], os.environ["SID"]

    def hang():
        ready.touch()
        time.sleep(600)
        raise SystemExit("not killed")

    def hang_before_commit(model_name):
        # Inside the store's write transaction, after the INSERT reached the database.
        original = Store.write

        @contextmanager
        def write(self):
            with original(self) as session:
                yield session
                if any(type(obj).__name__ == model_name for obj in session.new):
                    session.flush()
                    hang()

        Store.write = write

    settings = Settings()
    store = Store.from_settings(settings)
    if os.environ["STEP"] == "curate":
        import cl_assets.core.curation as curation

        if stage == "writing":  # some lines are in the temp file, the rest not yet
            real = curation.writing.atomic_write_bytes

            def slow(path, chunks):
                def first_chunk_then_hang():
                    for chunk in chunks:
                        yield chunk
                        hang()
                return real(path, first_chunk_then_hang())

            curation.writing.atomic_write_bytes = slow
        elif stage == "renamed":  # the complete file is in place, the row not yet written
            Store.add_snapshot = lambda self, **fields: hang()
        elif stage == "committing":
            hang_before_commit("Snapshot")
        curation.curate_snapshot(settings, store, snapshot_id=sid)
    else:
        import cl_assets.core.cycle as cycle
        from cl_assets.core.training import TrainConfig

        progress = None
        if stage == "training":  # mid-run: the model is training into the temp folder
            progress = lambda step: hang() if step.step >= 1 else None
        elif stage == "renamed":  # the folder is complete and in place, not registered yet
            cycle.files_sha256 = lambda folder: hang()
        elif stage == "committing":
            hang_before_commit("Adapter")
        config = TrainConfig.from_settings(settings)
        cycle.train_partition(settings, store, sid, settings.base_model, config, progress)
    """
)


def _kill_at(settings: Settings, step: str, stage: str, tmp_path: Path) -> None:
    ready, log = tmp_path / f"ready-{step}-{stage}", tmp_path / f"child-{step}-{stage}.log"
    env = child_env(settings, READY=str(ready), STAGE=stage, SID=SID, STEP=step)
    proc = start_python(CHILD, env, log)
    try:
        wait_for(ready, proc, log, timeout=600)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL


def _visible(folder: Path) -> list[str]:
    """What a person or a glob would take for real output: everything but dot-files."""
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def _ingested(settings: Settings) -> Settings:
    Ingestor(settings).import_jsonl(REPO / "data" / "demo" / "interactions.jsonl")
    return settings


@pytest.mark.parametrize(
    ("db", "stage"),
    [("sqlite", "writing"), ("sqlite", "renamed"), ("sqlite", "committing"), ("postgresql", "committing")],
)
def test_kill_during_snapshot_writing_leaves_nothing_registered_and_the_rerun_succeeds(
    request: pytest.FixtureRequest, tmp_path: Path, db: str, stage: str
) -> None:
    url = request.getfixturevalue("pg_url") if db == "postgresql" else None
    settings = _ingested(make_settings(tmp_path / "home", database_url=url))
    store = Store.from_settings(settings)

    _kill_at(settings, "curate", stage, tmp_path)

    assert store.get_snapshot(SID) is None and store.list_snapshots() == []
    if stage == "writing":
        assert _visible(settings.curated_dir) == []  # no half file where snapshots live
        # ... because the kill really hit the write: its temp file is still there
        assert [p.name for p in settings.curated_dir.iterdir() if p.name.startswith(".curated_")]
    else:  # renamed into place whole (the rename is atomic), but never registered
        assert validate_snapshot(snapshot_path(settings, SID)) == []
    # The next run of the same partition (a Dagster retry) succeeds and registers a whole snapshot.
    curated = curate_partition(settings, store, SID)
    path = snapshot_path(settings, SID)
    assert not curated.reused and curated.chatml_problems == [] and curated.pii_problems == []
    assert store.get_snapshot(SID).n_rows == curated.snapshot.n_rows == len(path.read_text().splitlines()) > 10
    assert validate_snapshot(path) == []
    assert _visible(settings.curated_dir) == [path.name]
    if stage != "writing":  # the unregistered leftover was set aside as an ignored dot-file, not lost
        assert [p for p in settings.curated_dir.iterdir() if p.name.startswith(f".{path.name}.unregistered-")]


@pytest.mark.parametrize("stage", ["training", "renamed", "committing"])
def test_kill_during_training_leaves_no_adapter_registered_or_loadable_and_the_rerun_succeeds(
    tmp_path: Path, tiny_model_dir: Path, stage: str
) -> None:
    settings = _ingested(
        make_settings(tmp_path / "home", base_model=str(tiny_model_dir), train_max_steps=2, train_batch_size=2,
                      train_max_length=64)
    )
    store = Store.from_settings(settings)
    curate_partition(settings, store, SID)

    _kill_at(settings, "train", stage, tmp_path)

    assert store.get_adapter(SID) is None and store.list_adapters() == []
    with pytest.raises(RegistryError, match="not registered"):
        Registry(settings, store).verified_path(SID)
    assert load_check(settings, store, SID, tiny_model_dir) is not None  # nothing loadable
    if stage == "training":
        assert _visible(settings.adapters_dir) == []  # no half folder where adapters live
        # ... because the kill really hit training: its temp folder is still there
        assert [p.name for p in settings.adapters_dir.iterdir() if p.name.startswith(f".{SID}.tmp-")]
    else:  # renamed into place whole (the rename is atomic): complete, but not registered
        assert (adapter_dir(settings, SID) / "adapter_model.safetensors").is_file()

    trained = train_partition(settings, store, SID, tiny_model_dir, TrainConfig.from_settings(settings))
    assert trained.steps == 2 and trained.reused == (stage != "training")
    assert Registry(settings, store).verified_path(SID) == adapter_dir(settings, SID)
    assert load_check(settings, store, SID, tiny_model_dir) is None
    assert _visible(settings.adapters_dir) == [SID]
    record = json.loads((adapter_dir(settings, SID) / "training.json").read_text())
    assert record["snapshot"]["sha256"] == store.get_snapshot(SID).sha256
