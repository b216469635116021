"""Quality gates: pure verdicts over an evaluation, reused by Dagster's blocking asset checks.

The regression gate compares item by item, not only the average: a candidate that loses more
than `gate_max_lost_items` answers the reference got right fails even with a higher mean.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cl_assets.core.evaluation import BASE_LABEL, Comparison, lost_items
from cl_assets.settings import Settings


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    reason: str
    metadata: dict[str, Any] = field(default_factory=dict)


def regression_gate(report: Comparison, *, tolerance: float, max_lost_items: int) -> Gate:
    """Candidate vs the deployed adapter (or the base when none serves) on the taught set."""
    reference = report.deployed_taught or report.base_taught
    ref_label = report.deployed or BASE_LABEL
    cand = report.candidate_taught
    lost = lost_items(reference, cand)
    problems = []
    if cand.accuracy < reference.accuracy - tolerance:
        problems.append(f"accuracy {cand.accuracy:.1%} below {ref_label}'s {reference.accuracy:.1%} (tolerance {tolerance:.1%})")
    if len(lost) > max_lost_items:
        problems.append(f"lost {len(lost)} item(s) {ref_label} answered correctly (at most {max_lost_items}): {', '.join(lost[:5])}")
    reason = "; ".join(problems) or f"accuracy {cand.accuracy:.1%} vs {ref_label} {reference.accuracy:.1%}, {len(lost)} item(s) lost"
    return Gate(
        "eval_not_worse_than_deployed",
        not problems,
        reason,
        {"candidate_accuracy": cand.accuracy, "reference": ref_label, "reference_accuracy": reference.accuracy, "lost_items": lost},
    )


def forgetting_gate(report: Comparison, *, max_forgetting: float) -> Gate:
    """General-knowledge accuracy may drop at most `max_forgetting` below the base model's."""
    forgetting = report.forgetting
    if forgetting is None:
        return Gate("forgetting_within_bound", True, "no general set configured", {})
    passed = forgetting <= max_forgetting + 1e-9
    reason = f"general accuracy {report.general[report.candidate].accuracy:.1%} vs base {report.general[BASE_LABEL].accuracy:.1%} (drop {forgetting:.1%}, bound {max_forgetting:.1%})"
    return Gate("forgetting_within_bound", passed, reason, {"forgetting": forgetting, "lost_general": report.lost_vs_base_general})


def evaluation_gates(report: Comparison, settings: Settings) -> list[Gate]:
    return [
        regression_gate(report, tolerance=settings.gate_tolerance, max_lost_items=settings.gate_max_lost_items),
        forgetting_gate(report, max_forgetting=settings.gate_max_forgetting),
    ]
