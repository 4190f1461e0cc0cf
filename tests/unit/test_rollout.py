"""Canary decisions, the weights tag's format and histogram quantiles."""

import math

import pytest

from gateway.commands.rollout import Snapshot, add_samples
from gateway.commands.rollout_quality import with_quality
from gateway.core.rollout import (
    AUDIT_TAG_PREFIX,
    Action,
    Figures,
    Guard,
    Verdict,
    canary_weights,
    format_weights,
    judge,
    merge_weights,
    parse_assignments,
    parse_steps,
    parse_weights,
    quantile,
)
from gateway.core.stats.decision import GateAction, GateDecision

GUARD = Guard(min_requests=50, max_error_rate_increase=0.01, max_p99_ratio=1.5)


@pytest.mark.parametrize(
    ("champion", "challenger", "action"),
    [
        # healthy and enough traffic
        (Figures(1000, 5, 0.010), Figures(100, 0, 0.011), Action.ADVANCE),
        # error rate above the champion's by more than one point
        (Figures(1000, 5, 0.010), Figures(100, 3, 0.010), Action.ROLLBACK),
        # exactly at the allowed increase
        (Figures(1000, 0, 0.010), Figures(100, 1, 0.010), Action.ADVANCE),
        # too slow
        (Figures(1000, 0, 0.010), Figures(100, 0, 0.020), Action.ROLLBACK),
        # too few requests to judge a healthy-looking challenger
        (Figures(1000, 0, 0.010), Figures(10, 0, 0.010), Action.HOLD),
        # too few requests, but a fifth of the minimum already failed: broken is broken
        (Figures(1000, 0, 0.010), Figures(20, 10, 0.010), Action.ROLLBACK),
        # a slow p99 on few requests is not enough to judge
        (Figures(1000, 0, 0.010), Figures(10, 0, 0.100), Action.HOLD),
        # no champion traffic (the 100% step): the challenger's own errors still count
        (Figures(0, 0, None), Figures(200, 10, 0.010), Action.ROLLBACK),
        (Figures(0, 0, None), Figures(200, 0, 0.010), Action.ADVANCE),
    ],
)
def test_the_guard_judges_the_challenger_against_the_champion(
    champion: Figures, challenger: Figures, action: Action
) -> None:
    verdict = judge(champion, challenger, GUARD)
    assert verdict.action is action
    assert verdict.reasons


def test_a_rollback_says_why_with_figures() -> None:
    verdict = judge(Figures(1000, 0, 0.010), Figures(100, 20, 0.030), GUARD)
    assert verdict.reasons == (
        "error rate 20.00% vs champion 0.00% (allowed +1.00%)",
        "p99 latency 3.00x the champion's (allowed 1.5x)",
    )


def test_weights_tag_round_trips_and_ignores_other_variants() -> None:
    text = format_weights({"challenger": 25, "champion": 75})
    assert text == '{"challenger":25,"champion":75}'
    assert parse_weights(text, ["champion", "challenger"]) == {"champion": 75, "challenger": 25}
    assert parse_weights('{"champion": 1, "other": 5}', ["champion"]) == {"champion": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "is not JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"champion": -1}', "must be an integer >= 0"),
        ('{"champion": 1.5}', "must be an integer >= 0"),
        ('{"champion": true}', "must be an integer >= 0"),
    ],
)
def test_a_bad_weights_tag_is_refused(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_weights(text, ["champion"])


def test_live_weights_overlay_the_configured_ones_but_never_zero_them_all() -> None:
    assert merge_weights({"champion": 90, "challenger": 10}, {"challenger": 50}) == {
        "champion": 90,
        "challenger": 50,
    }
    with pytest.raises(ValueError, match="every variant weight 0"):
        merge_weights({"champion": 90, "challenger": 10}, {"champion": 0, "challenger": 0})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("champion=75,challenger=25", {"champion": 75, "challenger": 25}),
        (" a=0 , b=1 ", {"a": 0, "b": 1}),
    ],
)
def test_assignments_parse(text: str, expected: dict[str, int]) -> None:
    assert parse_assignments(text) == expected


@pytest.mark.parametrize("text", ["champion", "champion=-1", "=3", "champion=x", ""])
def test_bad_assignments_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"NAME=WEIGHT"):
        parse_assignments(text)


@pytest.mark.parametrize(("text", "steps"), [("5,25,50,100", (5, 25, 50, 100)), ("100", (100,))])
def test_steps_parse(text: str, steps: tuple[int, ...]) -> None:
    assert parse_steps(text) == steps


@pytest.mark.parametrize("text", ["50,25", "0,50", "5,5", "5,101", "a"])
def test_steps_must_rise_within_a_percentage(text: str) -> None:
    with pytest.raises(ValueError, match="steps"):
        parse_steps(text)


def test_canary_weights_split_a_hundred() -> None:
    assert canary_weights("champion", "challenger", 25) == {"champion": 75, "challenger": 25}


@pytest.mark.parametrize(
    ("buckets", "q", "expected"),
    [
        # 100 requests, all in (0.01, 0.025]: p99 interpolates to 0.01 + 0.99 * 0.015
        ([(0.01, 0), (0.025, 100), (math.inf, 100)], 0.99, 0.01 + 0.99 * 0.015),
        # p50 at a bucket boundary
        ([(0.005, 50), (0.01, 100), (math.inf, 100)], 0.5, 0.005),
        # the top bucket is open: the largest finite bound
        ([(0.005, 0), (math.inf, 10)], 0.99, 0.005),
        ([(0.005, 0), (math.inf, 0)], 0.99, None),
        ([], 0.5, None),
    ],
)
def test_quantile_interpolates_like_promql(
    buckets: list[tuple[float, float]], q: float, expected: float | None
) -> None:
    result = quantile(buckets, q)
    assert result == expected if expected is None else result == pytest.approx(expected)


def test_decisions_are_recorded_under_the_documented_tag_prefix() -> None:
    assert AUDIT_TAG_PREFIX == "gateway.rollout."


_ADVANCE = Verdict(Action.ADVANCE, ("operational ok",))
_HOLD = Verdict(Action.HOLD, ("too few requests",))
_ROLLBACK = Verdict(Action.ROLLBACK, ("error rate",))


@pytest.mark.parametrize(
    ("operational", "quality", "expected"),
    [
        (_ADVANCE, GateAction.ADVANCE, Action.ADVANCE),
        (_ADVANCE, GateAction.HOLD, Action.HOLD),
        (_ADVANCE, GateAction.ROLLBACK, Action.ROLLBACK),
        (_HOLD, GateAction.ADVANCE, Action.HOLD),
        (_HOLD, GateAction.ROLLBACK, Action.ROLLBACK),
        (_ROLLBACK, GateAction.ADVANCE, Action.ROLLBACK),
        (_ROLLBACK, GateAction.HOLD, Action.ROLLBACK),
    ],
)
def test_the_canary_advances_only_when_the_guard_and_the_quality_gate_both_say_so(
    operational: Verdict, quality: GateAction, expected: Action
) -> None:
    combined = with_quality(operational, GateDecision(quality, f"quality {quality}"))
    assert combined.action is expected
    if expected is Action.ROLLBACK and operational.action is not Action.ROLLBACK:
        assert combined.reasons == (f"quality {quality}",)
    if operational.action is Action.ROLLBACK:
        assert combined == operational


def test_a_failure_the_fallback_answered_for_counts_as_the_failed_variant_s_error() -> None:
    text = "\n".join(
        [
            "# TYPE gateway_requests_total counter",
            'gateway_requests_total{endpoint="churn",variant="champion",model_version="1",status="200"} 95',
            'gateway_requests_total{endpoint="churn",variant="challenger",model_version="2",status="200"} 1',
            "# TYPE gateway_fallback_total counter",
            'gateway_fallback_total{endpoint="churn",variant="challenger",status="500"} 4',
            'gateway_fallback_total{endpoint="other",variant="challenger",status="500"} 9',
            "",
        ]
    )
    snapshot: Snapshot = {}
    add_samples(snapshot, text, "churn")
    assert (snapshot["challenger"].requests, snapshot["challenger"].errors) == (5, 4)
    assert (snapshot["champion"].requests, snapshot["champion"].errors) == (95, 0)
