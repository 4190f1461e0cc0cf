"""CUPED: theta is the within-variant OLS slope, means stay unbiased, variance falls by rho^2."""

import numpy as np
import pytest
import statsmodels.api as sm

from gateway.core.stats.cuped import cuped, cuped_adjust


def _experiment(
    seed: int, n: int, rho: float, effect: float = 0.0
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Covariate X ~ N(5, 1); outcome Y = 2 + rho X + sqrt(1 - rho^2) noise (+ effect)."""
    rng = np.random.default_rng(seed)
    outcomes, covariates = {}, {}
    for name, shift in (("champion", 0.0), ("challenger", effect)):
        x = rng.normal(5.0, 1.0, n)
        outcomes[name] = 2 + shift + rho * x + np.sqrt(1 - rho**2) * rng.normal(0, 1, n)
        covariates[name] = x
    return outcomes, covariates


def _within_sum_of_squares(groups: dict[str, np.ndarray]) -> float:
    return float(sum(np.sum((g - g.mean()) ** 2) for g in groups.values()))


@pytest.mark.parametrize(("seed", "rho", "effect"), [(1, 0.7, 0.0), (2, 0.3, 0.5), (3, -0.5, 2.0)])
def test_theta_is_the_ols_slope_with_one_intercept_per_variant(
    seed: int, rho: float, effect: float
) -> None:
    outcomes, covariates = _experiment(seed, 500, rho, effect)
    result = cuped(outcomes, covariates)
    y = np.concatenate([outcomes["champion"], outcomes["challenger"]])
    x = np.concatenate([covariates["champion"], covariates["challenger"]])
    is_challenger = np.repeat([0.0, 1.0], 500)
    design = np.column_stack([np.ones_like(x), is_challenger, x])
    assert result.theta == pytest.approx(sm.OLS(y, design).fit().params[2], rel=1e-9)


def test_theta_for_one_variant_is_the_simple_regression_slope() -> None:
    outcomes, covariates = _experiment(4, 300, 0.6)
    result = cuped({"only": outcomes["champion"]}, {"only": covariates["champion"]})
    slope = np.polyfit(covariates["champion"], outcomes["champion"], 1)[0]
    assert result.theta == pytest.approx(slope, rel=1e-9)


def test_adjusted_outcomes_subtract_theta_times_the_centred_covariate() -> None:
    outcomes, covariates = _experiment(5, 200, 0.5, effect=1.0)
    result = cuped(outcomes, covariates)
    pooled_mean = np.concatenate(list(covariates.values())).mean()
    for name in outcomes:
        expected = outcomes[name] - result.theta * (covariates[name] - pooled_mean)
        assert np.allclose(result.adjusted[name], expected, rtol=1e-12)
    assert cuped_adjust(outcomes, covariates).keys() == result.adjusted.keys()


def test_variance_reduction_is_the_share_of_within_variant_variance_removed() -> None:
    outcomes, covariates = _experiment(6, 1000, 0.6, effect=0.3)
    result = cuped(outcomes, covariates)
    before = _within_sum_of_squares(outcomes)
    after = _within_sum_of_squares(result.adjusted)
    assert result.variance_reduction == pytest.approx(1 - after / before, rel=1e-9)


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.8])
def test_simulated_variance_reduction_is_about_rho_squared(rho: float) -> None:
    outcomes, covariates = _experiment(7, 20_000, rho, effect=0.4)
    assert cuped(outcomes, covariates).variance_reduction == pytest.approx(rho**2, abs=0.02)


def test_adjusted_difference_of_means_stays_unbiased_and_gets_tighter() -> None:
    raw, adjusted = [], []
    for seed in range(300):
        outcomes, covariates = _experiment(100 + seed, 200, 0.8, effect=0.25)
        result = cuped(outcomes, covariates)
        raw.append(outcomes["challenger"].mean() - outcomes["champion"].mean())
        adjusted.append(result.adjusted["challenger"].mean() - result.adjusted["champion"].mean())
    assert np.mean(adjusted) == pytest.approx(0.25, abs=0.01)
    assert np.var(adjusted) == pytest.approx(np.var(raw) * (1 - 0.8**2), rel=0.25)


def test_a_covariate_without_spread_adjusts_nothing() -> None:
    outcomes = {"a": np.array([1.0, 2.0, 3.0]), "b": np.array([2.0, 4.0])}
    result = cuped(outcomes, {"a": np.ones(3), "b": np.ones(2)})
    assert (result.theta, result.variance_reduction) == (0.0, 0.0)
    assert result.adjusted["a"].tolist() == [1.0, 2.0, 3.0]


def test_an_empty_variant_stays_empty() -> None:
    outcomes, covariates = _experiment(8, 50, 0.5)
    outcomes["new"], covariates["new"] = np.array([]), np.array([])
    result = cuped(outcomes, covariates)
    assert result.adjusted["new"].size == 0
    assert (
        result.theta
        == cuped(
            {k: outcomes[k] for k in ("champion", "challenger")},
            {k: covariates[k] for k in ("champion", "challenger")},
        ).theta
    )


def test_identical_outcomes_have_no_variance_to_reduce() -> None:
    result = cuped({"a": np.full(4, 3.0)}, {"a": np.array([1.0, 2.0, 3.0, 4.0])})
    assert (result.theta, result.variance_reduction) == (0.0, 0.0)


@pytest.mark.parametrize(
    ("outcomes", "covariates", "message"),
    [
        ({"a": [1.0, 2.0]}, {"b": [1.0, 2.0]}, "outcomes for"),
        ({"a": [1.0, 2.0]}, {"a": [1.0]}, "2 outcomes but 1 covariates"),
    ],
)
def test_mismatched_inputs_raise(
    outcomes: dict[str, list[float]], covariates: dict[str, list[float]], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        cuped(outcomes, covariates)
