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


def forgetting_gate(
    report: Comparison, *, max_forgetting: float, alpha: float = 0.05, max_drift: float | None = None
) -> Gate:
    """The candidate keeps what the base knew: judged on the paired general-set result and the drift.

    Fails when the net drop (items lost minus items gained, over n) exceeds `max_forgetting`,
    when the losses outnumber the gains by more than chance (one-sided exact McNemar p < `alpha`,
    so a run of small losses is caught even under the bound), or when the base's own answers
    cost more than `max_drift` extra nats per token under the candidate.
    """
    pair = report.general_paired
    if pair is None:
        return Gate("forgetting_within_bound", True, "no general set configured", {})
    problems = []
    if pair.drop > max_forgetting + 1e-9:
        problems.append(f"general set down {pair.drop:.1%} (bound {max_forgetting:.1%})")
    if pair.p_worse < alpha:
        problems.append(f"lost {len(pair.lost)} vs gained {len(pair.gained)} is worse than chance (McNemar p = {pair.p_worse:.3f} < {alpha})")
    drift = report.drift
    if drift is not None and max_drift is not None and drift.extra_nll_per_token > max_drift + 1e-12:
        problems.append(f"drift {drift.extra_nll_per_token:+.3f} nats/token above {max_drift}")
    summary = (
        f"general {report.general[report.candidate].accuracy:.1%} vs base {report.general[BASE_LABEL].accuracy:.1%}: "
        f"lost {len(pair.lost)}, gained {len(pair.gained)} of {pair.n} (p = {pair.p_worse:.3f})"
        + (f", drift {drift.extra_nll_per_token:+.3f} nats/token, {drift.prefix_kept:.0%} start the same" if drift else "")
    )
    metadata: dict[str, Any] = {"forgetting": pair.drop, "lost_general": list(pair.lost),
                                "gained_general": list(pair.gained), "mcnemar_p": pair.p_worse}
    if drift is not None:
        metadata.update(drift_nll_per_token=drift.extra_nll_per_token, drift_prefix_kept=drift.prefix_kept)
    return Gate("forgetting_within_bound", not problems, "; ".join(problems) + (" — " if problems else "") + summary, metadata)


def evaluation_gates(report: Comparison, settings: Settings) -> list[Gate]:
    return [
        regression_gate(report, tolerance=settings.gate_tolerance, max_lost_items=settings.gate_max_lost_items),
        forgetting_gate(
            report,
            max_forgetting=settings.gate_max_forgetting,
            alpha=settings.gate_forgetting_alpha,
            max_drift=settings.gate_max_drift,
        ),
    ]
