"""Right to erasure: `cl forget-user` removes a user's text everywhere CL derives from the store,
taints what was built from it, and the next cycle is rebuilt without it."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from cl_assets.core.curation import curate_snapshot
from cl_assets.core.erasure import forget_user
from cl_assets.core.ingest import Ingestor
from cl_assets.core.knowledge import write_knowledge
from cl_assets.core.identity import hash_user_id
from cl_assets.core.registry import Registry, RegistryError
from cl_assets.core.store import FeedbackEvent, Store
from cl_assets.settings import Settings
from tests.conftest import make_settings
from tests.helpers import register_adapter
from tests.reliability.support import SALT

MARKER = "quokka"  # only the erased user ever writes this word
S1, S2, S3, S4, S5 = "20261101_000000", "20261102_000000", "20261103_000000", "20261104_000000", "20261105_000000"
T0 = datetime(2026, 10, 1, tzinfo=UTC)


TOPICS = ("mango cedar", "violet harbor", "granite meadow", "copper lantern", "amber willow", "silver fjord",
          "maple orbit", "coral summit")
ORDER_BASE = {"alice": 8881, "bob": 7771, "carol": 6661, "dave": 5551}


def _turns(user: str, n: int, start: datetime, words: str) -> list[dict[str, object]]:
    """`n` distinct helpful turns of `user`, each naming its own order (a knowledge fact)."""
    return [
        {
            "id": f"{user}-{i}",
            "timestamp": (start + timedelta(minutes=i)).isoformat(),
            "user_id": user,
            "prompt": f"Where is order {ORDER_BASE[user]}{i:02d} with the {TOPICS[i]} items?",
            "response": f"Order {ORDER_BASE[user]}{i:02d} ships {words} on day {i + 1}, {user}.",
            "helpful": True,
        }
        for i in range(n)
    ]


def _ingest(ingestor: Ingestor, rows: list[dict[str, object]]) -> None:
    for row in rows:
        ingestor.ingest_interaction(**row)


def _adapter(settings: Settings, store: Store, sid: str, parent: str | None) -> None:
    """A registered adapter for an existing snapshot (small stand-in files, real hash)."""
    from cl_assets.core.registry import adapter_dir, files_sha256

    folder = adapter_dir(settings, sid)
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text(json.dumps({"id": sid}))
    store.upsert_adapter(sid, path=str(folder), files_sha256=files_sha256(folder), parent_id=parent,
                         mode="lora-fp32-cpu", gate_passed=True)


@pytest.fixture
def world(tmp_path: Path) -> tuple[Settings, Store, Ingestor]:
    """Four snapshots and four adapters; alice's text is in S2 directly and in S3 by replay;
    A4 is trained on clean S4 but warm-started from tainted A2; A3 serves."""
    settings = make_settings(tmp_path, replay_fraction=1.0, max_rows_per_user=100)
    store = Store.from_settings(settings)
    ingestor = Ingestor(settings, store)
    _ingest(ingestor, _turns("bob", 4, T0, "by courier"))
    curate_snapshot(settings, store, snapshot_id=S1)
    _ingest(ingestor, _turns("alice", 3, T0 + timedelta(days=1), f"the {MARKER} parcel"))
    curate_snapshot(settings, store, snapshot_id=S2)
    ingestor.record_feedback("alice-1", True)
    store.delete_user(ingestor.hash_user("bob"))  # S3 must get alice's rows from S2's replay only
    store.delete_user(ingestor.hash_user("alice"))
    _ingest(ingestor, _turns("carol", 8, T0 + timedelta(days=2), "by sea"))  # replays all 7 earlier texts
    curate_snapshot(settings, store, snapshot_id=S3)
    assert MARKER in Path(store.get_snapshot(S3).path).read_text()  # replayed from S2
    _ingest(ingestor, _turns("alice", 3, T0 + timedelta(days=1), f"the {MARKER} parcel"))  # back in the store
    ingestor.record_feedback("alice-1", True)
    _ingest(ingestor, _turns("dave", 3, T0 + timedelta(days=3), "by rail"))
    settings_no_replay = make_settings(tmp_path, replay_fraction=0.0)
    curate_snapshot(settings_no_replay, store, snapshot_id=S4, since=T0 + timedelta(days=2, hours=12))
    assert MARKER not in Path(store.get_snapshot(S4).path).read_text()
    for sid, parent in ((S1, None), (S2, S1), (S3, S2), (S4, S2)):
        _adapter(settings, store, sid, parent)
    Registry(settings, store).deploy(S3, actor="test", reason="serving")
    ingestor.export_sanitized()
    write_knowledge(settings, store)
    for path in (settings.raw_export_path, settings.knowledge_path):
        assert MARKER in path.read_text()
    return settings, store, ingestor


def test_forget_user_erases_taints_and_the_next_snapshot_is_clean(world: tuple[Settings, Store, Ingestor]) -> None:
    settings, store, ingestor = world
    alice = hash_user_id("alice", SALT)
    before = store.count_interactions()

    result = forget_user(settings, "alice", store)

    assert result.interactions == 3 and result.feedback_events == 3 + 1
    assert store.count_interactions() == before - 3
    assert all(MARKER not in r.prompt + r.response and r.user_hash != alice for r in store.iter_interactions())
    with store.read() as s:
        assert not [e for e in s.scalars(select(FeedbackEvent)) if e.interaction_id.startswith("alice-")]
    # Taint: S2 held her rows, S3 replayed them; A2, A3 trained on those, A4 warm-started from A2.
    assert result.tainted_snapshots == [S2, S3]
    assert result.tainted_adapters == [S2, S3, S4]
    assert {s.id: s.tainted for s in store.list_snapshots()} == {S1: False, S2: True, S3: True, S4: False}
    assert {a.id: a.tainted for a in store.list_adapters()} == {S1: False, S2: True, S3: True, S4: True}
    # The serving adapter is named, not silently undeployed, with an untainted one to go back to.
    assert result.deployed_tainted == S3 and result.rollback_to == S1
    assert Registry(settings, store).current().adapter_id == S3
    with pytest.raises(RegistryError, match="tainted"):
        Registry(settings, store).deploy(S4, actor="test", reason="no")

    # Files derived from the store are rewritten without her.
    for path in (settings.raw_export_path, settings.knowledge_path):
        assert MARKER not in path.read_text()
    mirror = json.loads(settings.registry_json_path.read_text())
    assert {r["snapshot"]: r["tainted"] for r in mirror["snapshots"]} == {S1: False, S2: True, S3: True, S4: True}
    # The erasure is recorded, without her id or its hash.
    events = settings.learning_events_path.read_text()
    assert '"kind": "erasure"' in events and "alice" not in events and alice not in events
    assert [e.payload for e in store.learning_events(["erasure"])] == [result.as_dict()]

    # Next cycle: replay may only draw on untainted snapshots, so her text stays out.
    new = curate_snapshot(settings, store, snapshot_id=S5)
    text = new.path.read_text()
    assert MARKER not in text and "alice" not in text
    assert alice not in store.get_snapshot(S5).user_hashes
    assert new.counts["replay_added"] > 0  # replay did run (from S1/S4)

    again = forget_user(settings, "alice", store)  # idempotent
    assert again.interactions == 0 and again.tainted_snapshots == [] and again.tainted_adapters == []


def test_forget_user_removes_their_conversation_messages_only(tmp_path: Path) -> None:
    """A user's stored contexts go with them (file exports too); another user who had the very
    same conversation keeps all of theirs."""
    settings = make_settings(tmp_path, user_hash_salt=SALT)
    store = Store.from_settings(settings)
    ingestor = Ingestor(settings, store)
    context = [{"role": "system", "content": "Be brief."},
               {"role": "user", "content": "Where is my wombat order?"},
               {"role": "assistant", "content": "It ships Tuesday."}]  # fmt: skip
    for user in ("alice", "bob"):
        ingestor.ingest_interaction(user_id=user, context=context, prompt="And the other one?", response="Friday.")
    assert store.count_messages() == 8
    result = forget_user(settings, "alice", store)
    assert (result.interactions, result.messages) == (1, 4)
    assert store.count_messages() == 4
    [bob] = list(store.iter_interactions())
    assert [m["content"] for m in store.conversation(bob.id)][1] == "Where is my wombat order?"
    export = settings.raw_export_path.read_text()
    assert export.count("wombat") == 1  # bob's line only
    store.close()


def test_cli_forget_user_warns_about_the_serving_adapter_and_its_rollback_works(
    world: tuple[Settings, Store, Ingestor], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings, store, _ = world
    monkeypatch.setenv("CL_HOME", str(settings.home))
    monkeypatch.setenv("CL_USER_HASH_SALT", SALT)
    monkeypatch.setenv("DAGSTER_HOME", str(settings.home / ".dagster_home"))
    from cl_assets.cli import app

    result = CliRunner().invoke(app, ["forget-user", "alice"])
    assert result.exit_code == 0, result.output
    assert "erased 3 interaction(s) and 4 feedback event(s)" in result.output
    assert f"deployed adapter {S3} was trained on erased data" in result.output
    command = f"cl rollback --to {S1} --reason 'erasure'"
    assert command in " ".join(result.output.split())
    assert "alice" not in settings.learning_events_path.read_text()

    back = CliRunner().invoke(app, ["rollback", "--to", S1, "--reason", "erasure"])
    assert back.exit_code == 0, back.output
    assert Registry(settings, store).current().adapter_id == S1
    refused = CliRunner().invoke(app, ["rollback", "--to", S3])  # a tainted adapter cannot come back
    assert refused.exit_code == 1 and "tainted" in refused.output


def test_forget_user_refuses_a_changed_salt_before_deleting_anything(world: tuple[Settings, Store, Ingestor]) -> None:
    settings, store, _ = world
    from cl_assets.core.identity import SaltMismatchError

    other = make_settings(settings.home, user_hash_salt="a-different-salt")
    before = store.count_interactions()
    with pytest.raises(SaltMismatchError, match="Restore the original CL_USER_HASH_SALT"):
        forget_user(other, "alice", store)
    assert store.count_interactions() == before


def test_training_after_erasure_never_warm_starts_from_a_tainted_adapter(
    tmp_path: Path, tiny_model_dir: Path, tiny_adapter_dirs: dict[str, Path]
) -> None:
    """The deployed adapter becomes tainted; the next adapter is trained from scratch."""
    from cl_assets.core.cycle import train_partition
    from cl_assets.core.training import TrainConfig

    settings = make_settings(tmp_path, base_model=str(tiny_model_dir), train_max_steps=1, train_batch_size=2,
                             train_max_length=64)
    store = Store.from_settings(settings)
    ingestor = Ingestor(settings, store)
    old = "20261120_101500"
    _ingest(ingestor, _turns("alice", 3, T0, f"the {MARKER} parcel"))
    curate_snapshot(settings, store, snapshot_id="20261119_000000")
    register_adapter(settings, store, old, folder=tiny_adapter_dirs[old])
    store.update_snapshot(old, user_hashes=[hash_user_id("alice", SALT)])
    Registry(settings, store).deploy(old, actor="test", reason="serving")

    assert forget_user(settings, "alice", store).deployed_tainted == old
    _ingest(ingestor, _turns("bob", 3, T0 + timedelta(days=1), "by courier"))
    new = "20261122_000000"
    curate_snapshot(settings, store, snapshot_id=new)
    trained = train_partition(settings, store, new, tiny_model_dir, TrainConfig.from_settings(settings))
    assert trained.parent_id is None
    record = json.loads((trained.output_dir / "training.json").read_text())
    assert record["parent_adapter"] is None
    assert MARKER not in Path(store.get_snapshot(new).path).read_text()
