"""Sample sizes: the fixed-horizon plan against statsmodels, and the sequential plan."""

import math

import pytest
from scipy import stats
from statsmodels.stats.power import NormalIndPower, tt_ind_solve_power, zt_ind_solve_power

from gateway.core.stats.power import (
    additional_samples,
    outcome_variance,
    required_samples,
    samples_per_variant,
    sequential_samples_per_variant,
)
from gateway.core.stats.sequential import always_valid_interval

CASES = [
    (0.1, 1.0, 1.0, 0.05, 0.8),
    (0.02, 0.25, 1.0, 0.05, 0.8),
    (0.05, 2.0, 3.0, 0.05, 0.8),
    (0.01, 0.09, 19.0, 0.05, 0.9),
    (-0.03, 0.16, 0.5, 0.01, 0.8),
    (0.2, 1.0, 1.0, 0.1, 0.95),
]


@pytest.mark.parametrize(("mde", "variance", "ratio", "alpha", "power"), CASES)
def test_required_samples_equal_statsmodels_normal_power_solution(
    mde: float, variance: float, ratio: float, alpha: float, power: float
) -> None:
    n = required_samples(mde, variance=variance, alpha=alpha, power=power, ratio=ratio)
    effect = abs(mde) / math.sqrt(variance)
    expected = NormalIndPower().solve_power(
        effect_size=effect, alpha=alpha, power=power, ratio=ratio
    )
    assert n == pytest.approx(expected, rel=1e-9)
    assert n == pytest.approx(
        zt_ind_solve_power(effect_size=effect, alpha=alpha, power=power, ratio=ratio), rel=1e-9
    )
    assert samples_per_variant(
        mde, variance=variance, alpha=alpha, power=power, ratio=ratio
    ) == math.ceil(expected)


@pytest.mark.parametrize("effect", [0.5, 1.0, 1.5])
def test_required_samples_reach_exactly_the_wanted_power_for_large_effects(effect: float) -> None:
    # statsmodels' own root finder stops near 1e-7 here; its power function is exact.
    n = required_samples(effect, variance=1.0)
    assert NormalIndPower().power(effect, n, 0.05) == pytest.approx(0.8, rel=1e-12)


@pytest.mark.parametrize(("ratio", "mde"), [(1.0, 0.01), (4.0, 0.01), (1.0, -0.02), (0.25, 0.05)])
def test_baseline_rate_uses_each_variants_bernoulli_variance(ratio: float, mde: float) -> None:
    p0, p1 = 0.1, 0.1 + mde
    # Var(difference) = p1 (1 - p1) / n + p0 (1 - p0) / (ratio n) = s2 (1 + 1 / ratio) / n.
    s2 = (ratio * p1 * (1 - p1) + p0 * (1 - p0)) / (ratio + 1)
    assert outcome_variance(mde, variance=None, baseline_rate=p0, ratio=ratio) == pytest.approx(s2)
    assert required_samples(mde, baseline_rate=p0, ratio=ratio) == pytest.approx(
        required_samples(mde, variance=s2, ratio=ratio), rel=1e-12
    )


@pytest.mark.parametrize(("effect", "ratio"), [(0.1, 1.0), (0.2, 3.0), (0.05, 1.0)])
def test_normal_approximation_is_within_two_records_of_the_t_test_plan(
    effect: float, ratio: float
) -> None:
    n = required_samples(effect, variance=1.0, ratio=ratio)
    t_plan = tt_ind_solve_power(effect_size=effect, alpha=0.05, power=0.8, ratio=ratio)
    assert 0 < t_plan - n < 2


def test_ten_to_eleven_percent_needs_the_textbook_sample_size() -> None:
    # Unpooled normal approximation: (1.96 + 0.84)^2 (0.09 + 0.0979) / 0.01^2, about 14,750.
    assert samples_per_variant(0.01, baseline_rate=0.1) == 14749


def test_additional_samples_count_down_to_zero() -> None:
    needed = samples_per_variant(0.1, variance=1.0)
    assert additional_samples(0.1, 0, variance=1.0) == needed
    assert additional_samples(0.1, 1000, variance=1.0) == needed - 1000
    assert additional_samples(0.1, needed + 5, variance=1.0) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mde": 0.1}, "exactly one of variance and baseline_rate"),
        ({"mde": 0.1, "variance": 1.0, "baseline_rate": 0.5}, "exactly one"),
        ({"mde": 0.0, "variance": 1.0}, "mde"),
        ({"mde": 0.1, "baseline_rate": 1.0}, "baseline_rate"),
        ({"mde": 0.2, "baseline_rate": 0.9}, "baseline_rate"),
        ({"mde": 0.1, "variance": 0.0}, "variance"),
        ({"mde": 0.1, "variance": 1.0, "power": 1.0}, "power"),
        ({"mde": 0.1, "variance": 1.0, "ratio": 0.0}, "ratio"),
    ],
)
def test_invalid_plans_raise(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        samples_per_variant(**kwargs)


@pytest.mark.parametrize(("mde", "variance", "ratio", "alpha", "power"), CASES)
def test_sequential_plan_is_the_first_n_whose_final_interval_has_the_power(
    mde: float, variance: float, ratio: float, alpha: float, power: float
) -> None:
    n = sequential_samples_per_variant(
        mde, variance=variance, alpha=alpha, power=power, ratio=ratio
    )

    def final_look_power(size: int) -> float:
        v = variance * (1 + 1 / ratio) / size
        half = always_valid_interval(0.0, v, mde**2, alpha)[1]
        return float(stats.norm.sf((half - abs(mde)) / math.sqrt(v)))

    assert final_look_power(n) >= power > final_look_power(n - 1)
    assert n > samples_per_variant(mde, variance=variance, alpha=alpha, power=power, ratio=ratio)


def test_sequential_plan_takes_a_given_mixture_variance() -> None:
    default = sequential_samples_per_variant(0.1, variance=1.0)
    assert sequential_samples_per_variant(0.1, variance=1.0, tau2=0.01) == default
    assert sequential_samples_per_variant(0.1, variance=1.0, tau2=1.0) != default
