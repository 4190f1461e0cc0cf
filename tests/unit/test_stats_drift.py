"""Feature drift: KS and chi-square against scipy, PSI against a direct computation."""

import itertools

import numpy as np
import pytest
from scipy import stats

from gateway.core.stats.drift import (
    PSI_EPSILON,
    PsiLevel,
    binned_shares,
    categorical_drift,
    numeric_drift,
    psi,
    psi_level,
    quantile_edges,
)


def _direct_psi(reference: np.ndarray, current: np.ndarray, bins: int) -> float:
    """PSI over decile bins of the reference, written out with loops."""
    cuts = sorted(set(np.quantile(reference, [i / bins for i in range(1, bins)])))
    bounds = [-np.inf, *cuts, np.inf]
    total = 0.0
    for low, high in itertools.pairwise(bounds):
        r = np.mean((reference > low) & (reference <= high)) or PSI_EPSILON
        c = np.mean((current > low) & (current <= high)) or PSI_EPSILON
        total += (c - r) * np.log(c / r)
    return float(total)


@pytest.mark.parametrize(
    ("shift", "scale", "n_ref", "n_cur", "bins"),
    [
        (0.0, 1.0, 5000, 5000, 10),
        (0.3, 1.0, 2000, 800, 10),
        (0.0, 2.0, 1000, 1000, 5),
        (1.0, 1.0, 300, 50, 20),
    ],
)
def test_numeric_drift_equals_scipy_ks_and_a_direct_psi(
    shift: float, scale: float, n_ref: int, n_cur: int, bins: int
) -> None:
    rng = np.random.default_rng(11)
    reference = rng.normal(0.0, 1.0, n_ref)
    current = rng.normal(shift, scale, n_cur)
    drift = numeric_drift(reference, current, bins=bins, name="age")
    ks = stats.ks_2samp(reference, current)
    assert (drift.name, drift.kind) == ("age", "numeric")
    assert drift.ks_statistic == pytest.approx(ks.statistic, rel=1e-9)
    assert drift.ks_p_value == pytest.approx(ks.pvalue, rel=1e-9)
    assert drift.psi == pytest.approx(_direct_psi(reference, current, bins), rel=1e-9, abs=1e-15)
    assert drift.chi2 is None
    assert drift.drifted == (drift.psi >= 0.2 or ks.pvalue < 0.01)


def test_same_distribution_is_not_drifted_and_a_large_shift_is() -> None:
    rng = np.random.default_rng(12)
    reference = rng.normal(0, 1, 4000)
    assert not numeric_drift(reference, rng.normal(0, 1, 4000)).drifted
    shifted = numeric_drift(reference, rng.normal(1, 1, 4000))
    assert shifted.drifted
    assert shifted.psi_level is PsiLevel.MAJOR


def test_tied_quantiles_collapse_into_one_bin_edge() -> None:
    reference = np.array([0.0] * 95 + [1.0] * 5)
    assert quantile_edges(reference, 10).tolist() == [0.0]
    drift = numeric_drift(reference, np.array([0.0] * 50 + [1.0] * 50))
    assert drift.psi == pytest.approx((0.5 - 0.95) * np.log(0.5 / 0.95) + (0.5 - 0.05) * np.log(10))


def test_constant_reference_still_detects_new_values() -> None:
    drift = numeric_drift([3.0] * 100, [3.0] * 50 + [4.0] * 50)
    expected = (0.5 - 1.0) * np.log(0.5) + (0.5 - PSI_EPSILON) * np.log(0.5 / PSI_EPSILON)
    assert drift.psi == pytest.approx(expected)
    assert drift.drifted


def test_identical_samples_have_zero_psi() -> None:
    values = np.random.default_rng(13).normal(size=1000)
    drift = numeric_drift(values, values)
    assert drift.psi == 0.0
    assert drift.ks_statistic == 0.0
    assert not drift.drifted


def test_bins_are_right_closed() -> None:
    assert binned_shares([1.0, 2.0, 2.5, 3.0], [2.0]).tolist() == [0.5, 0.5]
    with pytest.raises(ValueError, match="no values"):
        binned_shares([], [2.0])


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [([], [1.0], "both sides"), ([1.0], [], "both sides"), ([1.0, np.nan], [1.0], "NaN")],
)
def test_numeric_drift_without_values_raises(
    reference: list[float], current: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        numeric_drift(reference, current)


def test_fewer_than_two_bins_raise() -> None:
    with pytest.raises(ValueError, match="bins"):
        numeric_drift([1.0, 2.0], [1.0, 2.0], bins=1)


@pytest.mark.parametrize(
    ("reference", "current"),
    [
        ({"a": 500, "b": 300, "c": 200}, {"a": 480, "b": 330, "c": 190}),
        ({"a": 500, "b": 300, "c": 200}, {"a": 200, "b": 300, "c": 500}),
        ({"yes": 90, "no": 10}, {"yes": 70, "no": 30}),
        ({"a": 100, "b": 50}, {"a": 100, "b": 40, "new": 10}),
    ],
)
def test_categorical_drift_equals_scipy_chi2_contingency_and_a_direct_psi(
    reference: dict[str, int], current: dict[str, int]
) -> None:
    drift = categorical_drift(reference, current, name="country")
    categories = sorted(set(reference) | set(current))
    table = [[reference.get(k, 0) for k in categories], [current.get(k, 0) for k in categories]]
    chi2 = stats.chi2_contingency(table, correction=False)
    assert drift.chi2 == pytest.approx(chi2.statistic, rel=1e-9)
    assert drift.chi2_p_value == pytest.approx(chi2.pvalue, rel=1e-9, abs=1e-300)
    r = np.array(table[0]) / sum(table[0])
    c = np.array(table[1]) / sum(table[1])
    r, c = np.where(r == 0, PSI_EPSILON, r), np.where(c == 0, PSI_EPSILON, c)
    assert drift.psi == pytest.approx(float(np.sum((c - r) * np.log(c / r))), rel=1e-9)
    assert (drift.kind, drift.ks_statistic, drift.ks_p_value) == ("categorical", None, None)
    assert drift.drifted == (drift.psi >= 0.2 or chi2.pvalue < 0.01)


def test_category_unseen_on_both_sides_is_dropped() -> None:
    with_empty = categorical_drift({"a": 10, "b": 20, "c": 0}, {"a": 12, "b": 18, "c": 0})
    without = categorical_drift({"a": 10, "b": 20}, {"a": 12, "b": 18})
    assert with_empty == without


def test_a_single_category_has_no_chi_square_evidence() -> None:
    drift = categorical_drift({"a": 10}, {"a": 30})
    assert (drift.chi2, drift.chi2_p_value, drift.psi, drift.drifted) == (0.0, 1.0, 0.0, False)


@pytest.mark.parametrize(
    ("reference", "current", "message"),
    [
        ({}, {"a": 1}, "both sides"),
        ({"a": 3}, {"a": 0}, "both sides"),
        ({"a": -1}, {"a": 1}, ">= 0"),
    ],
)
def test_categorical_drift_without_counts_raises(
    reference: dict[str, int], current: dict[str, int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        categorical_drift(reference, current)


@pytest.mark.parametrize(
    ("value", "level"),
    [
        (0.0, PsiLevel.STABLE),
        (0.099, PsiLevel.STABLE),
        (0.1, PsiLevel.MODERATE),
        (0.2, PsiLevel.MAJOR),
    ],
)
def test_psi_levels_follow_the_conventional_thresholds(value: float, level: PsiLevel) -> None:
    assert psi_level(value) is level


def test_psi_of_equal_shares_is_zero_and_symmetric_otherwise() -> None:
    assert psi([0.2, 0.8], [0.2, 0.8]) == 0.0
    assert psi([0.2, 0.8], [0.5, 0.5]) == pytest.approx(psi([0.5, 0.5], [0.2, 0.8]))
