"""The quality sensor's rollback rule, judged without Dagster."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from cl_assets.core.monitoring import RatingCount
from cl_assets.core.quality import quality_verdict


@dataclass
class Row:
    id: int
    adapter_id: str | None


OLD, NEW = "20261101_000000", "20261102_000000"
HISTORY = [Row(1, OLD), Row(2, NEW)]


def judge(history: list[Row], counts: dict[str, RatingCount], **kw: object):  # type: ignore[no-untyped-def]
    rule = {"min_ratings": 10, "drop_margin": 0.2, "action": "alert", **kw}
    return quality_verdict(history, counts.__getitem__, **rule)  # type: ignore[arg-type]


def test_a_drop_beyond_the_margin_alerts_or_rolls_back_to_the_previous_adapter() -> None:
    counts = {OLD: RatingCount(20, 18), NEW: RatingCount(20, 8)}
    alert = judge(HISTORY, counts)
    assert alert.action == "alert" and alert.previous == OLD and alert.deployment_id == 2
    assert alert.drop == pytest.approx(0.5) and "fell to 40%" in alert.reason and "from 90%" in alert.reason
    back = judge(HISTORY, counts, action="rollback")
    assert back.action == "rollback" and back.previous == OLD and back.adapter_id == NEW


@pytest.mark.parametrize(
    ("history", "counts", "judged", "why"),
    [
        ([], {}, None, "no adapter is deployed"),
        ([Row(1, OLD), Row(2, None)], {}, None, "no adapter is deployed"),
        ([Row(1, NEW)], {}, None, "no earlier adapter"),
        ([Row(1, OLD), Row(2, NEW), Row(3, NEW)], {OLD: RatingCount(20, 18), NEW: RatingCount(9, 0)}, None, "not enough ratings"),
        (HISTORY, {OLD: RatingCount(9, 9), NEW: RatingCount(20, 0)}, None, "not enough ratings"),
        (HISTORY, {OLD: RatingCount(20, 18), NEW: RatingCount(20, 15)}, None, "within the margin"),
        (HISTORY, {OLD: RatingCount(20, 18), NEW: RatingCount(20, 0)}, "2", "already judged"),
    ],
)
def test_no_action_without_a_clear_drop(history: list[Row], counts: dict[str, RatingCount], judged: str | None, why: str) -> None:
    verdict = judge(history, counts, judged=judged)
    assert verdict.action == "skip" and why in verdict.reason and verdict.deployment_id is None


def test_the_previous_adapter_is_the_last_different_one_not_the_row_before() -> None:
    history = [Row(1, OLD), Row(2, NEW), Row(3, NEW)]  # redeployed: still compared with OLD
    verdict = judge(history, {OLD: RatingCount(10, 10), NEW: RatingCount(10, 7)})
    assert verdict.action == "alert" and verdict.previous == OLD and verdict.deployment_id == 3
