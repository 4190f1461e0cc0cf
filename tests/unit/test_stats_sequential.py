"""The mSPRT's closed form against numeric integration, and its running p-value and interval."""

import math

import pytest
from scipy import integrate, stats

from gateway.core.stats.sequential import (
    SequentialState,
    always_valid_interval,
    always_valid_p_value,
    default_tau2,
    log_likelihood_ratio,
    running_intervals,
    running_p_values,
    running_states,
)

CASES = [
    (0.1, 0.01, 0.04),
    (0.5, 0.02, 0.01),
    (-0.3, 0.05, 1.0),
    (0.0, 0.1, 0.1),
    (2.0, 0.3, 0.5),
    (0.02, 1e-4, 4e-4),
    (-0.004, 2e-6, 1e-4),
]


def _integrated_ratio(difference: float, variance: float, tau2: float) -> float:
    """The mixture likelihood ratio: integral of N(d; theta, V) / N(d; 0, V) * N(theta; 0, tau2)."""
    norm = math.sqrt(2 * math.pi * tau2)

    def integrand(theta: float) -> float:
        # N(d; theta, V) / N(d; 0, V) = exp(theta (2d - theta) / 2V), times the N(0, tau2) density.
        log_ratio = theta * (2 * difference - theta) / (2 * variance)
        return math.exp(log_ratio - theta * theta / (2 * tau2)) / norm

    centre = difference * tau2 / (variance + tau2)
    spread = math.sqrt(variance * tau2 / (variance + tau2))
    value, _ = integrate.quad(
        integrand, centre - 40 * spread, centre + 40 * spread, epsabs=0, epsrel=1e-13, limit=200
    )
    return float(value)


@pytest.mark.parametrize(("difference", "variance", "tau2"), CASES)
def test_closed_form_ratio_equals_numeric_integration(
    difference: float, variance: float, tau2: float
) -> None:
    closed = math.exp(log_likelihood_ratio(difference, variance, tau2))
    assert closed == pytest.approx(_integrated_ratio(difference, variance, tau2), rel=1e-9)


@pytest.mark.parametrize(("difference", "variance", "tau2"), CASES)
def test_p_value_is_the_inverse_ratio_capped_at_one(
    difference: float, variance: float, tau2: float
) -> None:
    expected = min(1.0, 1.0 / _integrated_ratio(difference, variance, tau2))
    assert always_valid_p_value(difference, variance, tau2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("difference", "variance", "tau2"), CASES)
@pytest.mark.parametrize("alpha", [0.05, 0.01, 0.2])
def test_interval_endpoints_are_where_the_ratio_reaches_one_over_alpha(
    difference: float, variance: float, tau2: float, alpha: float
) -> None:
    low, high = always_valid_interval(difference, variance, tau2, alpha)
    for endpoint in (low, high):
        ratio = _integrated_ratio(difference - endpoint, variance, tau2)
        assert ratio == pytest.approx(1 / alpha, rel=1e-9)
    assert low < difference < high


def test_interval_excludes_zero_exactly_when_p_value_is_below_alpha() -> None:
    for difference in (0.05, 0.1, 0.15, 0.2, 0.25, 0.3):
        low, high = always_valid_interval(difference, 0.004, 0.01, 0.05)
        excludes = not low <= 0 <= high
        assert excludes == (always_valid_p_value(difference, 0.004, 0.01) < 0.05)


def test_always_valid_interval_is_wider_than_the_fixed_horizon_one() -> None:
    low, high = always_valid_interval(0.0, 0.01, 0.01, 0.05)
    assert -low == high > stats.norm.ppf(0.975) * 0.1


@pytest.mark.parametrize(
    ("difference", "variance", "p_value", "interval"),
    [
        (0.3, 0.0, 0.0, (0.3, 0.3)),
        (0.0, 0.0, 1.0, (0.0, 0.0)),
        (0.3, math.inf, 1.0, (-math.inf, math.inf)),
    ],
)
def test_degenerate_variances_give_clear_values(
    difference: float, variance: float, p_value: float, interval: tuple[float, float]
) -> None:
    assert always_valid_p_value(difference, variance, 0.01) == p_value
    assert always_valid_interval(difference, variance, 0.01) == interval


@pytest.mark.parametrize(
    ("variance", "tau2", "alpha", "message"),
    [(0.1, 0.0, 0.05, "tau2"), (-0.1, 0.1, 0.05, "variance"), (0.1, 0.1, 1.0, "alpha")],
)
def test_invalid_parameters_raise(variance: float, tau2: float, alpha: float, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        always_valid_interval(0.1, variance, tau2, alpha)


def test_running_p_value_is_the_minimum_so_far_and_interval_the_intersection() -> None:
    estimates = [(0.2, 0.04), (0.05, 0.02), (0.12, 0.01), (0.02, 0.005)]
    p_values = running_p_values(estimates, tau2=0.01)
    single = [always_valid_p_value(d, v, 0.01) for d, v in estimates]
    assert p_values == [min(single[: i + 1]) for i in range(len(single))]
    intervals = running_intervals(estimates, tau2=0.01, alpha=0.05)
    each = [always_valid_interval(d, v, 0.01, 0.05) for d, v in estimates]
    for i, (low, high) in enumerate(intervals):
        assert low == max(lo for lo, _ in each[: i + 1])
        assert high == min(hi for _, hi in each[: i + 1])


def test_state_counts_looks_and_starts_uninformative() -> None:
    state = SequentialState(tau2=0.01)
    assert (state.looks, state.p_value, state.interval) == (0, 1.0, (-math.inf, math.inf))
    states = running_states([(0.1, 0.01), (0.1, 0.005)], tau2=0.01)
    assert [s.looks for s in states] == [1, 2]
    assert states[-1] == state.update(0.1, 0.01).update(0.1, 0.005)
    assert running_p_values([], tau2=0.01) == []


def test_default_tau2_is_the_squared_minimum_detectable_effect() -> None:
    assert default_tau2(0.02) == pytest.approx(0.0004)
    assert default_tau2(-0.5) == 0.25
    with pytest.raises(ValueError, match="minimum detectable effect"):
        default_tau2(0.0)
