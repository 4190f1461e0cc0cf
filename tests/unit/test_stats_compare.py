"""Summaries and comparisons of means and ratio metrics, checked against scipy and statsmodels."""

import math

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import (
    confint_proportions_2indep,
    proportion_confint,
    proportions_ztest,
)
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW

from gateway.core.stats.compare import compare_means, compare_ratio, ratio_summary, summarize

TOL = 1e-9


def _normal(seed: int, n: int, mean: float, sd: float) -> np.ndarray:
    return np.random.default_rng(seed).normal(mean, sd, n)


def _bernoulli(seed: int, n: int, p: float) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(float)


@pytest.mark.parametrize(("n", "alpha"), [(2, 0.05), (30, 0.05), (1000, 0.01), (57, 0.1)])
def test_summary_of_numbers_is_a_t_interval(n: int, alpha: float) -> None:
    values = _normal(n, n, 3.0, 2.0)
    summary = summarize(values, alpha=alpha)
    low, high = DescrStatsW(values).tconfint_mean(alpha=alpha)
    assert summary.n == n
    assert summary.mean == pytest.approx(np.mean(values), rel=TOL)
    assert summary.variance == pytest.approx(np.var(values, ddof=1), rel=TOL)
    assert summary.ci == pytest.approx((low, high), rel=TOL)
    assert summary.standard_error == pytest.approx(stats.sem(values), rel=TOL)


@pytest.mark.parametrize(("n", "p"), [(1, 1.0), (10, 0.3), (500, 0.02), (2000, 0.5), (50, 0.0)])
def test_summary_of_zero_one_data_is_a_wilson_interval(n: int, p: float) -> None:
    values = _bernoulli(n, n, p)
    summary = summarize(values, alpha=0.05)
    expected = proportion_confint(int(values.sum()), n, alpha=0.05, method="wilson")
    assert summary.ci == pytest.approx(expected, rel=TOL, abs=1e-15)
    assert 0.0 <= summary.ci[0] <= summary.mean <= summary.ci[1] <= 1.0


def test_summary_of_one_number_has_no_variance_and_an_unbounded_interval() -> None:
    summary = summarize([4.2])
    assert (summary.n, summary.mean, summary.variance) == (1, 4.2, 0.0)
    assert summary.ci == (-math.inf, math.inf)


def test_summary_of_identical_numbers_has_a_zero_width_interval() -> None:
    summary = summarize([2.5] * 10)
    assert summary.variance == 0.0
    assert summary.ci == (2.5, 2.5)


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "no values"), ([1.0, math.nan], "NaN"), ([[1.0, 2.0]], "one-dimensional")],
)
def test_summary_of_unusable_values_raises(values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summarize(values)


@pytest.mark.parametrize(
    ("nt", "pt", "nc", "pc"),
    [
        (1000, 0.12, 1000, 0.10),
        (200, 0.5, 5000, 0.45),
        (50, 0.02, 80, 0.05),
        (3000, 0.3, 3000, 0.3),
    ],
)
def test_zero_one_samples_use_the_pooled_two_proportion_z_test(
    nt: int, pt: float, nc: int, pc: float
) -> None:
    treatment, control = _bernoulli(1, nt, pt), _bernoulli(2, nc, pc)
    result = compare_means(treatment, control, alpha=0.05)
    counts, nobs = [treatment.sum(), control.sum()], [nt, nc]
    statistic, p_value = proportions_ztest(counts, nobs)
    ci = confint_proportions_2indep(
        counts[0], nt, counts[1], nc, method="wald", compare="diff", alpha=0.05
    )
    assert result.test == "two_proportion_z"
    assert result.statistic == pytest.approx(statistic, rel=TOL)
    assert result.p_value == pytest.approx(p_value, rel=TOL)
    assert result.ci == pytest.approx(ci, rel=TOL)
    assert result.difference == pytest.approx(treatment.mean() - control.mean(), rel=TOL)
    assert result.relative_difference == pytest.approx(result.difference / control.mean())


@pytest.mark.parametrize(
    ("nt", "sdt", "nc", "sdc", "alpha"),
    [
        (100, 1.0, 100, 1.0, 0.05),
        (30, 3.0, 400, 0.5, 0.05),
        (5, 1.0, 7, 2.0, 0.1),
        (2, 1.0, 2, 1.0, 0.05),
    ],
)
def test_other_samples_use_welch_t_test(
    nt: int, sdt: float, nc: int, sdc: float, alpha: float
) -> None:
    treatment, control = _normal(3, nt, 10.3, sdt), _normal(4, nc, 10.0, sdc)
    result = compare_means(treatment, control, alpha=alpha)
    reference = stats.ttest_ind(treatment, control, equal_var=False)
    ci = reference.confidence_interval(confidence_level=1 - alpha)
    statistic, p_value, _ = CompareMeans.from_data(treatment, control).ttest_ind(usevar="unequal")
    assert result.test == "welch_t"
    assert result.statistic == pytest.approx(reference.statistic, rel=TOL)
    assert result.p_value == pytest.approx(reference.pvalue, rel=TOL)
    assert (result.statistic, result.p_value) == pytest.approx((statistic, p_value), rel=TOL)
    assert result.ci == pytest.approx((ci.low, ci.high), rel=TOL)
    assert result.variance == pytest.approx(
        np.var(treatment, ddof=1) / nt + np.var(control, ddof=1) / nc, rel=TOL
    )


def test_one_zero_one_sample_against_numbers_uses_welch() -> None:
    result = compare_means(_bernoulli(5, 100, 0.5), _normal(6, 100, 0.5, 0.2))
    assert result.test == "welch_t"


@pytest.mark.parametrize(
    ("treatment", "control", "expected"),
    [
        ([3.0, 3.0, 3.0], [3.0, 3.0], (0.0, 1.0, (0.0, 0.0))),
        ([4.0, 4.0, 4.0], [3.0, 3.0], (math.inf, 0.0, (1.0, 1.0))),
        ([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], (0.0, 1.0, (0.0, 0.0))),
        ([1.0, 1.0, 1.0], [1.0, 1.0], (0.0, 1.0, (0.0, 0.0))),
    ],
)
def test_zero_variance_gives_clear_values_not_nan(
    treatment: list[float], control: list[float], expected: tuple[float, float, tuple[float, float]]
) -> None:
    result = compare_means(treatment, control)
    assert (result.statistic, result.p_value, result.ci) == expected


def test_all_successes_against_all_failures_is_certain() -> None:
    result = compare_means([1.0] * 20, [0.0] * 20)
    assert result.difference == 1.0
    assert result.p_value < 1e-8
    assert result.ci == (1.0, 1.0)
    assert result.relative_difference is None


@pytest.mark.parametrize(("treatment", "control"), [([], [1.0, 2.0]), ([1.0, 2.0], [3.0])])
def test_a_comparison_needs_two_values_per_variant(
    treatment: list[float], control: list[float]
) -> None:
    with pytest.raises(ValueError, match="at least 2 per variant"):
        compare_means(treatment, control)


def _users(seed: int, n: int, a: float) -> tuple[np.ndarray, np.ndarray]:
    """Records per user (1 + Poisson(3)); a user's successes among them at rate Beta(a, 8)."""
    rng = np.random.default_rng(seed)
    records = 1 + rng.poisson(3.0, n)
    return rng.binomial(records, rng.beta(a, 8.0, n)).astype(float), records.astype(float)


def test_ratio_with_one_record_per_user_is_welch_z_test() -> None:
    treatment, control = _normal(7, 300, 1.1, 1.0), _normal(8, 500, 1.0, 2.0)
    result = compare_ratio(treatment, np.ones(300), control, np.ones(500))
    compare = CompareMeans.from_data(treatment, control)
    statistic, p_value = compare.ztest_ind(usevar="unequal")
    assert result.test == "delta_method_z"
    assert (result.statistic, result.p_value) == pytest.approx((statistic, p_value), rel=TOL)
    assert result.ci == pytest.approx(compare.zconfint_diff(usevar="unequal"), rel=TOL)


def test_ratio_variance_equals_the_delta_method_formula() -> None:
    numerators, denominators = _users(9, 400, 2.0)
    n = numerators.size
    mean_num, mean_den = numerators.mean(), denominators.mean()
    ratio = mean_num / mean_den
    covariance = np.cov(numerators, denominators, ddof=1)
    expected = (
        covariance[0, 0] / mean_den**2
        - 2 * mean_num * covariance[0, 1] / mean_den**3
        + mean_num**2 * covariance[1, 1] / mean_den**4
    ) / n
    summary = ratio_summary(numerators, denominators)
    assert summary.mean == pytest.approx(numerators.sum() / denominators.sum(), rel=TOL)
    assert summary.mean == pytest.approx(ratio, rel=TOL)
    assert summary.standard_error**2 == pytest.approx(expected, rel=TOL)
    z = stats.norm.ppf(0.975)
    assert summary.ci == pytest.approx(
        (ratio - z * math.sqrt(expected), ratio + z * math.sqrt(expected)), rel=TOL
    )
    other_num, other_den = _users(10, 300, 2.0)
    other = ratio_summary(other_num, other_den)
    result = compare_ratio(numerators, denominators, other_num, other_den)
    assert result.variance == pytest.approx(
        summary.standard_error**2 + other.standard_error**2, rel=TOL
    )


def test_ratio_interval_covers_the_true_difference_about_95_percent_of_the_time() -> None:
    runs, users = 1000, 300
    rng = np.random.default_rng(2018)
    records = 1 + rng.poisson(3.0, (2, runs, users))
    rates = np.stack([rng.beta(2.4, 8.0, (runs, users)), rng.beta(2.0, 8.0, (runs, users))])
    successes = rng.binomial(records, rates).astype(float)
    true_difference = 2.4 / 10.4 - 2.0 / 10.0
    covered = 0
    for run in range(runs):
        low, high = compare_ratio(
            successes[0, run], records[0, run], successes[1, run], records[1, run]
        ).ci
        covered += low <= true_difference <= high
    assert 0.93 <= covered / runs <= 0.97


def test_ratio_summary_of_one_user_is_unbounded() -> None:
    summary = ratio_summary([3.0], [4.0])
    assert (summary.n, summary.mean, summary.ci) == (1, 0.75, (-math.inf, math.inf))


@pytest.mark.parametrize(
    ("numerators", "denominators", "message"),
    [
        ([], [], "no units"),
        ([0.0, 0.0], [0.0, 0.0], "no units"),
        ([1.0, 2.0], [1.0], "2 numerators but 1 denominators"),
        ([1.0, 2.0], [1.0, -1.0], ">= 0"),
    ],
)
def test_unusable_ratio_inputs_raise(
    numerators: list[float], denominators: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        ratio_summary(numerators, denominators)


def test_ratio_comparison_needs_two_users_per_variant() -> None:
    with pytest.raises(ValueError, match="at least 2 per variant"):
        compare_ratio([1.0], [2.0], [1.0, 2.0], [2.0, 3.0])
