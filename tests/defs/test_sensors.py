"""Sensors evaluated with build_sensor_context against a real store."""

from __future__ import annotations

import json

import pytest
from dagster import DagsterInstance, SensorResult, SkipReason, build_sensor_context

from cl_assets.core.ingest import Ingestor
from cl_assets.core.registry import Registry
from cl_assets.core.store import Store
from cl_assets.definitions import build_definitions
from cl_assets.defs.resources import SettingsResource, StoreResource
from cl_assets.settings import Settings
from tests.conftest import make_settings
from tests.helpers import register_adapter


@pytest.fixture
def home(tmp_path) -> Settings:  # type: ignore[no-untyped-def]
    return make_settings(tmp_path, retrain_min_feedback=5, quality_min_ratings=10, quality_drop_margin=0.2)


def _resource(settings: Settings, **overrides: object) -> SettingsResource:
    values = {"user_hash_salt": "test-salt-not-secret", "retrain_min_feedback": 5, "quality_min_ratings": 10,
              "quality_drop_margin": 0.2, **overrides}
    return SettingsResource(home=str(settings.home), overrides_json=json.dumps(values))


def _tick(settings: Settings, name: str, cursor: str | None, **overrides: object):  # type: ignore[no-untyped-def]
    resource = _resource(settings, **overrides)  # one source: the sensor's rule and its store
    sensor = next(s for s in build_definitions(resource).sensors if s.name == name)
    with build_sensor_context(instance=DagsterInstance.ephemeral(), cursor=cursor,
                              resources={"store": StoreResource(settings=resource)}) as context:
        return sensor(context)


def test_the_description_and_the_threshold_come_from_the_same_settings(home: Settings) -> None:
    ingestor = Ingestor(home)
    _rated(ingestor, 4, helpful=True)
    resource = _resource(home, retrain_min_feedback=3)
    sensor = next(s for s in build_definitions(resource).sensors if s.name == "feedback_sensor")
    assert "(3)" in (sensor.description or "")
    assert isinstance(_tick(home, "feedback_sensor", None, retrain_min_feedback=3), SensorResult)
    below = _tick(home, "feedback_sensor", None, retrain_min_feedback=7)
    assert isinstance(below, SkipReason) and "a cycle needs 7" in below.skip_message


def _rated(ingestor: Ingestor, n: int, *, helpful: bool | list[bool], adapter: str | None = None, start: int = 0) -> None:
    for i in range(n):
        value = helpful[i] if isinstance(helpful, list) else helpful
        done = ingestor.ingest_interaction(id=f"{adapter}-{start + i}", prompt=f"q{start + i}", response="a",
                                           adapter_version=adapter)
        ingestor.record_feedback(done.id, value)


def test_feedback_sensor_threshold_cursor_and_quiet_second_tick(home: Settings) -> None:
    ingestor = Ingestor(home)
    _rated(ingestor, 4, helpful=True)
    below = _tick(home, "feedback_sensor", None)
    assert isinstance(below, SkipReason) and "4 new feedback" in below.skip_message

    _rated(ingestor, 1, helpful=False, start=4)
    fired = _tick(home, "feedback_sensor", None)
    assert isinstance(fired, SensorResult)
    assert len(fired.run_requests) == 1
    (request,) = fired.run_requests
    (add,) = fired.dynamic_partitions_requests
    assert add.partition_keys == [request.partition_key]
    newest = Store.from_settings(home).feedback_since(0)[1]
    assert fired.cursor == str(newest)

    again = _tick(home, "feedback_sensor", fired.cursor)
    assert isinstance(again, SkipReason) and "0 new feedback" in again.skip_message


def test_feedback_sensor_starts_from_the_last_snapshot_watermark(home: Settings) -> None:
    ingestor = Ingestor(home)
    _rated(ingestor, 6, helpful=True)
    watermark = ingestor.store.feedback_since(0)[1]
    ingestor.store.add_snapshot(id="20261101_000000", path="x", sha256="0" * 64, n_rows=1, feedback_watermark=watermark)
    assert isinstance(_tick(home, "feedback_sensor", None), SkipReason)


def _two_deployments(home: Settings) -> tuple[Ingestor, Registry]:
    ingestor = Ingestor(home)
    registry = Registry(home, ingestor.store)
    for sid in ("20261101_000000", "20261102_000000"):
        register_adapter(home, ingestor.store, sid)
        registry.deploy(sid, actor="test", reason="cycle")
    return ingestor, registry


def test_quality_sensor_fires_on_a_seeded_drop_and_requests_rollback(home: Settings) -> None:
    ingestor, registry = _two_deployments(home)
    _rated(ingestor, 20, helpful=[i < 18 for i in range(20)], adapter="20261101_000000")  # 90 %
    _rated(ingestor, 20, helpful=[i < 8 for i in range(20)], adapter="20261102_000000")  # 40 %

    alert = _tick(home, "quality_sensor", None)
    assert isinstance(alert, SensorResult) and not alert.run_requests
    assert "fell to 40%" in alert.skip_reason.skip_message
    assert [e.kind for e in ingestor.store.learning_events(["quality_drop"])] == ["quality_drop"]

    rollback = _tick(home, "quality_sensor", None, quality_action="rollback")
    (request,) = rollback.run_requests
    assert request.partition_key == "20261101_000000"
    assert "fell to 40%" in request.run_config["ops"]["deployed_adapter"]["config"]["reason"]
    # The same deployment is judged once.
    assert isinstance(_tick(home, "quality_sensor", rollback.cursor, quality_action="rollback"), SkipReason)


def test_quality_sensor_ignores_noise_below_the_minimum_ratings(home: Settings) -> None:
    ingestor, _ = _two_deployments(home)
    _rated(ingestor, 20, helpful=True, adapter="20261101_000000")
    _rated(ingestor, 5, helpful=False, adapter="20261102_000000")  # 0 % but only 5 ratings
    quiet = _tick(home, "quality_sensor", None)
    assert isinstance(quiet, SkipReason) and "not enough ratings" in quiet.skip_message
