"""The forgetting gate judges the paired general-set result and the drift, not two averages."""

from __future__ import annotations

import pytest

from cl_assets.core import evaluation as E
from cl_assets.core.gates import forgetting_gate


def _result(adapter: str | None, correct: list[bool]) -> E.EvalResult:
    items = tuple(
        E.ItemResult(f"g{i}", "q", ("k",), "a", ok, float(ok), ("k",) if ok else (), 1.0, 0.5, 1, 1.0)
        for i, ok in enumerate(correct)
    )
    n = len(items)
    return E.EvalResult(adapter, sum(correct) / n, sum(correct) / n, n, items, 1, 1, 0.5, 1, 8)


def _report(base: list[bool], candidate: list[bool], drift: float | None = None) -> E.Comparison:
    taught = {"base": _result(None, [False]), "c": _result("c", [True])}
    general = {"base": _result(None, base), "c": _result("c", candidate)}
    items = None
    if drift is not None:
        items = E.Drift(8, (E.DriftItem("g0", 10, 5.0, 5.0 + 10 * drift, True),))
    return E.Comparison("c", None, taught, general, drift=items)


def test_mcnemar_exact_one_sided_p_values() -> None:
    assert E.mcnemar_p(0, 0) == 1.0
    assert E.mcnemar_p(4, 0) == pytest.approx(1 / 16)
    assert E.mcnemar_p(5, 0) == pytest.approx(1 / 32)
    assert E.mcnemar_p(3, 3) == pytest.approx(42 / 64)  # P(X >= 3), X ~ Bin(6, 1/2)
    assert E.mcnemar_p(0, 5) == 1.0


def test_losses_balanced_by_gains_pass() -> None:
    base = [True] * 200
    candidate = [True] * 200
    candidate[:3] = [False] * 3
    base[10:13] = [False] * 3  # three gained where the base was wrong
    gate = forgetting_gate(_report(base, candidate), max_forgetting=0.02)
    assert gate.passed, gate.reason
    assert gate.metadata["lost_general"] == ["g0", "g1", "g2"] and len(gate.metadata["gained_general"]) == 3


def test_a_net_drop_above_the_bound_fails() -> None:
    base = [True] * 100
    candidate = [True] * 97 + [False] * 3
    gate = forgetting_gate(_report(base, candidate), max_forgetting=0.02, alpha=1e-9)
    assert not gate.passed and "down 3.0%" in gate.reason


def test_one_sided_losses_fail_under_the_bound_when_beyond_chance() -> None:
    base = [True] * 400
    candidate = [True] * 395 + [False] * 5  # -1.25 points, but 5 lost and none gained: p = 1/32
    gate = forgetting_gate(_report(base, candidate), max_forgetting=0.02, alpha=0.05)
    assert not gate.passed and "McNemar" in gate.reason
    assert forgetting_gate(_report(base, candidate), max_forgetting=0.02, alpha=0.01).passed


def test_drift_above_its_bound_fails_even_with_the_answers_right() -> None:
    same = [True] * 50
    assert forgetting_gate(_report(same, same, drift=0.1), max_forgetting=0.02, max_drift=0.25).passed
    gate = forgetting_gate(_report(same, same, drift=1.1), max_forgetting=0.02, max_drift=0.25)
    assert not gate.passed and "drift +1.100" in gate.reason
    assert gate.metadata["drift_nll_per_token"] == pytest.approx(1.1)
