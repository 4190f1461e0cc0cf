"""Verdicts of the report and the quality-gated canary, from always-valid intervals."""

import math

import pytest

from gateway.core.stats.compare import Comparison
from gateway.core.stats.decision import (
    Decision,
    GateAction,
    decide,
    oriented,
    quality_gate,
)

COMPARISON = Comparison(
    difference=0.02,
    ci=(0.005, 0.035),
    p_value=0.004,
    statistic=2.9,
    test="two_proportion_z",
    relative_difference=0.2,
    variance=0.0000585,
)


@pytest.mark.parametrize(
    ("interval", "higher_is_better", "margin", "decision"),
    [
        ((0.01, 0.03), True, 0.0, Decision.PROMOTE),
        ((0.01, 0.03), False, 0.0, Decision.KEEP_CHAMPION),
        ((-0.03, -0.01), True, 0.0, Decision.KEEP_CHAMPION),
        ((-0.03, -0.01), False, 0.0, Decision.PROMOTE),
        ((-0.01, 0.02), True, 0.0, Decision.INCONCLUSIVE),
        ((0.0, 0.02), True, 0.0, Decision.INCONCLUSIVE),
        ((-0.03, -0.01), True, 0.02, Decision.INCONCLUSIVE),
        ((-0.05, -0.03), True, 0.02, Decision.KEEP_CHAMPION),
        ((-math.inf, math.inf), True, 0.0, Decision.INCONCLUSIVE),
    ],
)
def test_decision_follows_the_oriented_always_valid_interval(
    interval: tuple[float, float], higher_is_better: bool, margin: float, decision: Decision
) -> None:
    verdict = decide(
        srm_healthy=True,
        comparison=COMPARISON,
        sequential_interval=interval,
        higher_is_better=higher_is_better,
        margin=margin,
    )
    assert verdict.decision is decision
    assert "always-valid" in verdict.reason


def test_promote_reason_is_one_sentence_with_the_figures() -> None:
    verdict = decide(
        srm_healthy=True,
        comparison=COMPARISON,
        sequential_interval=(0.012, 0.034),
        higher_is_better=True,
    )
    assert verdict.reason == (
        "The challenger is better: the always-valid interval for the improvement "
        "[+0.012, +0.034] lies entirely above 0 "
        "(challenger minus champion +0.02; two-proportion z-test p = 0.004)."
    )


def test_an_unhealthy_split_decides_nothing_even_with_a_clear_interval() -> None:
    verdict = decide(
        srm_healthy=False,
        comparison=COMPARISON,
        sequential_interval=(0.01, 0.03),
        higher_is_better=True,
    )
    assert verdict.decision is Decision.SPLIT_UNHEALTHY
    assert "sample ratio mismatch" in verdict.reason


def test_without_outcomes_the_report_is_inconclusive() -> None:
    verdict = decide(
        srm_healthy=True, comparison=None, sequential_interval=None, higher_is_better=True
    )
    assert verdict.decision is Decision.INCONCLUSIVE
    assert "No outcomes joined" in verdict.reason


def test_before_the_planned_sample_size_nothing_is_decided() -> None:
    verdict = decide(
        srm_healthy=True,
        comparison=COMPARISON,
        sequential_interval=(0.01, 0.03),
        higher_is_better=True,
        min_samples_reached=False,
    )
    assert verdict.decision is Decision.INCONCLUSIVE
    assert "planned sample size" in verdict.reason


def test_without_an_always_valid_interval_the_fixed_horizon_one_is_used_and_named() -> None:
    verdict = decide(
        srm_healthy=True, comparison=COMPARISON, sequential_interval=None, higher_is_better=True
    )
    assert verdict.decision is Decision.PROMOTE
    assert "fixed-horizon interval for the improvement [+0.005, +0.035]" in verdict.reason


def test_inconclusive_reason_names_the_interval() -> None:
    verdict = decide(
        srm_healthy=True,
        comparison=COMPARISON,
        sequential_interval=(-0.01, 0.02),
        higher_is_better=False,
    )
    assert "[-0.02, +0.01] contains 0" in verdict.reason


@pytest.mark.parametrize(
    ("interval", "margin", "require_superior", "srm_healthy", "action"),
    [
        ((-0.05, -0.02), 0.01, False, True, GateAction.ROLLBACK),
        ((-0.05, -0.005), 0.01, False, True, GateAction.HOLD),
        ((-0.005, 0.03), 0.01, False, True, GateAction.ADVANCE),
        ((-0.005, 0.03), 0.01, True, True, GateAction.HOLD),
        ((0.001, 0.03), 0.01, True, True, GateAction.ADVANCE),
        ((0.001, 0.03), 0.0, True, True, GateAction.ADVANCE),
        ((-0.02, -0.001), 0.0, False, True, GateAction.ROLLBACK),
        ((-0.01, 0.01), 0.0, False, True, GateAction.HOLD),
        ((0.01, 0.03), 0.01, False, False, GateAction.HOLD),
        ((-0.05, -0.02), 0.01, False, False, GateAction.ROLLBACK),
        ((-math.inf, math.inf), 0.01, False, True, GateAction.HOLD),
    ],
)
def test_quality_gate_actions(
    interval: tuple[float, float],
    margin: float,
    require_superior: bool,
    srm_healthy: bool,
    action: GateAction,
) -> None:
    decision = quality_gate(
        interval=interval,
        margin=margin,
        require_superior=require_superior,
        srm_healthy=srm_healthy,
    )
    assert decision.action is action
    assert decision.reason.endswith(".")


def test_gate_holds_on_an_unhealthy_split_and_says_why() -> None:
    decision = quality_gate(
        interval=(0.01, 0.03), margin=0.0, require_superior=True, srm_healthy=False
    )
    assert "sample ratio mismatch" in decision.reason


@pytest.mark.parametrize(
    ("interval", "higher_is_better", "expected"),
    [((-0.01, 0.03), True, (-0.01, 0.03)), ((-0.01, 0.03), False, (-0.03, 0.01))],
)
def test_orientation_turns_the_interval_when_lower_is_better(
    interval: tuple[float, float], higher_is_better: bool, expected: tuple[float, float]
) -> None:
    assert oriented(interval, higher_is_better) == expected


def test_a_negative_margin_raises() -> None:
    with pytest.raises(ValueError, match="margin"):
        quality_gate(interval=(0.0, 1.0), margin=-0.1, require_superior=False, srm_healthy=True)
    with pytest.raises(ValueError, match="margin"):
        decide(
            srm_healthy=True,
            comparison=COMPARISON,
            sequential_interval=None,
            higher_is_better=True,
            margin=-0.1,
        )
