"""The quality sensor's rule as a pure verdict: alert or roll back when the deployed adapter's
helpful rate falls clearly below the previous adapter's.

Like `gates.py` for the evaluation checks: the sensor only turns the verdict into a skip, an
alert or a rollback run, so the rule is tested without Dagster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from cl_assets.core.monitoring import RatingCount


class DeploymentRow(Protocol):
    id: int
    adapter_id: str | None


@dataclass(frozen=True)
class QualityVerdict:
    """`skip`: nothing to do (yet); `alert`/`rollback`: the drop is real, `reason` says by how much.

    `deployment_id` is the deployment judged; a sensor stores it so the same one is not judged twice."""

    action: Literal["skip", "alert", "rollback"]
    reason: str
    deployment_id: int | None = None
    adapter_id: str | None = None
    previous: str | None = None
    drop: float | None = None


def quality_verdict(
    history: Sequence[DeploymentRow],
    ratings: Callable[[str], RatingCount],
    *,
    min_ratings: int,
    drop_margin: float,
    action: str,
    judged: str | None = None,
) -> QualityVerdict:
    """Judge the latest deployment of `history` (oldest first) against the adapter before it.

    `ratings(adapter_id)` counts the explicit ratings of that adapter's answers; `judged` is the
    id (as text) of the deployment judged last time, if any.
    """
    if not history or history[-1].adapter_id is None:
        return QualityVerdict("skip", "no adapter is deployed")
    current = history[-1]
    adapter_id = current.adapter_id
    assert adapter_id is not None
    if judged == str(current.id):
        return QualityVerdict("skip", f"deployment {current.id} was already judged")
    previous = next((d.adapter_id for d in reversed(history) if d.adapter_id != adapter_id), None)
    if previous is None:
        return QualityVerdict("skip", "no earlier adapter to compare with")
    now, before = ratings(adapter_id), ratings(previous)
    if now.rate is None or before.rate is None or now.rated < min_ratings or before.rated < min_ratings:
        return QualityVerdict(
            "skip",
            f"not enough ratings yet ({now.rated} for {adapter_id}, {before.rated} for {previous}; need {min_ratings} each)",
        )
    drop = before.rate - now.rate
    if drop < drop_margin:
        return QualityVerdict("skip", f"helpful rate {now.rate:.0%} vs {before.rate:.0%}: within the margin")
    why = (
        f"helpful rate of {adapter_id} fell to {now.rate:.0%} ({now.rated} ratings) from "
        f"{before.rate:.0%} for {previous} ({before.rated} ratings)"
    )
    return QualityVerdict("rollback" if action == "rollback" else "alert", why, current.id, adapter_id, previous, drop)
