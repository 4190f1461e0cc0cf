"""Sample ratio mismatch: chi-square of counts against shares, and time-weighted shares."""

import math

import pytest
from scipy import stats

from gateway.core.stats.srm import sample_ratio_mismatch, time_weighted_shares


@pytest.mark.parametrize(
    ("observed", "shares"),
    [
        ({"champion": 5050, "challenger": 4950}, {"champion": 0.5, "challenger": 0.5}),
        ({"champion": 9000, "challenger": 1100}, {"champion": 90, "challenger": 10}),
        ({"a": 310, "b": 290, "c": 420}, {"a": 0.3, "b": 0.3, "c": 0.4}),
        ({"champion": 800, "challenger": 200}, {"champion": 0.5, "challenger": 0.5}),
    ],
)
def test_statistic_and_p_value_equal_scipy_chisquare(
    observed: dict[str, int], shares: dict[str, float]
) -> None:
    result = sample_ratio_mismatch(observed, shares)
    names = sorted(observed)
    total_share = sum(shares.values())
    expected = [sum(observed.values()) * shares[name] / total_share for name in names]
    reference = stats.chisquare([observed[name] for name in names], expected)
    assert result.statistic == pytest.approx(reference.statistic, rel=1e-9, abs=1e-12)
    assert result.p_value == pytest.approx(reference.pvalue, rel=1e-9, abs=1e-300)
    assert result.df == len(names) - 1
    assert result.healthy == (reference.pvalue >= 0.001)
    assert result.expected == pytest.approx(dict(zip(names, expected, strict=True)), rel=1e-12)


def test_a_balanced_split_is_healthy_and_a_skewed_one_is_not() -> None:
    shares = {"champion": 0.5, "challenger": 0.5}
    assert sample_ratio_mismatch({"champion": 5050, "challenger": 4950}, shares).healthy
    assert not sample_ratio_mismatch({"champion": 5300, "challenger": 4700}, shares).healthy


def test_threshold_decides_health() -> None:
    observed, shares = {"a": 5150, "b": 4850}, {"a": 1.0, "b": 1.0}
    p_value = sample_ratio_mismatch(observed, shares).p_value
    assert 0.001 < p_value < 0.05
    assert sample_ratio_mismatch(observed, shares, threshold=0.001).healthy
    assert not sample_ratio_mismatch(observed, shares, threshold=0.05).healthy


def test_variant_with_share_zero_and_no_records_is_dropped() -> None:
    result = sample_ratio_mismatch(
        {"champion": 500, "challenger": 500, "old": 0},
        {"champion": 0.5, "challenger": 0.5, "old": 0.0},
    )
    assert result.df == 1
    assert set(result.observed) == {"champion", "challenger"}
    assert result.statistic == 0.0
    assert result.healthy


def test_records_for_a_variant_with_share_zero_make_the_split_unhealthy() -> None:
    result = sample_ratio_mismatch(
        {"champion": 500, "challenger": 500, "old": 1}, {"champion": 0.5, "challenger": 0.5}
    )
    assert result.statistic == math.inf
    assert result.p_value == 0.0
    assert not result.healthy
    assert result.expected["old"] == 0.0


@pytest.mark.parametrize(
    ("observed", "shares"),
    [
        ({}, {"champion": 0.5, "challenger": 0.5}),
        ({"champion": 0, "challenger": 0}, {"champion": 0.5, "challenger": 0.5}),
        ({"champion": 1234}, {"champion": 1.0}),
    ],
)
def test_no_records_or_a_single_variant_is_healthy_with_p_value_one(
    observed: dict[str, int], shares: dict[str, float]
) -> None:
    result = sample_ratio_mismatch(observed, shares)
    assert (result.statistic, result.p_value, result.healthy) == (0.0, 1.0, True)


@pytest.mark.parametrize(
    ("observed", "shares", "message"),
    [
        ({"a": -1, "b": 3}, {"a": 0.5, "b": 0.5}, "counts must be >= 0"),
        ({"a": 1, "b": 3}, {"a": -0.5, "b": 0.5}, "shares must be finite"),
        ({"a": 1, "b": 3}, {"a": 0.0, "b": 0.0}, "all 0"),
    ],
)
def test_invalid_counts_or_shares_raise(
    observed: dict[str, int], shares: dict[str, float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        sample_ratio_mismatch(observed, shares)


def test_time_weighted_shares_average_each_split_by_its_weight() -> None:
    shares = time_weighted_shares(
        [
            (100.0, {"champion": 95, "challenger": 5}),
            (300.0, {"champion": 75, "challenger": 25}),
        ]
    )
    assert shares == pytest.approx(
        {"champion": (100 * 0.95 + 300 * 0.75) / 400, "challenger": (100 * 0.05 + 300 * 0.25) / 400}
    )


def test_time_weighted_shares_skip_empty_intervals_and_keep_zero_weight_variants() -> None:
    shares = time_weighted_shares(
        [
            (0.0, {"champion": 50, "challenger": 50}),
            (10.0, {"champion": 0, "challenger": 0}),
            (10.0, {"champion": 100, "challenger": 0}),
        ]
    )
    assert shares == {"challenger": 0.0, "champion": 1.0}


@pytest.mark.parametrize(
    "intervals",
    [[], [(0.0, {"a": 1})], [(5.0, {"a": 0, "b": 0})]],
)
def test_time_weighted_shares_without_any_weight_raise(
    intervals: list[tuple[float, dict[str, int]]],
) -> None:
    with pytest.raises(ValueError, match="no interval"):
        time_weighted_shares(intervals)


def test_time_weighted_shares_feed_the_mismatch_test() -> None:
    shares = time_weighted_shares([(900, {"a": 90, "b": 10}), (100, {"a": 50, "b": 50})])
    # 900 requests at 90/10 and 100 at 50/50: a = 810 + 50, b = 90 + 50.
    assert sample_ratio_mismatch({"a": 860, "b": 140}, shares).statistic == pytest.approx(0.0)
