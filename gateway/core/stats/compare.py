"""Summaries of one variant's outcomes and comparisons of two variants' means or ratios.

Conventions: a sample whose values are all 0 or 1 is a proportion. Its summary interval is
Wilson's score interval; two proportions are compared with the z-test whose p-value uses the
pooled proportion and whose interval for the difference is the unpooled Wald interval. Other
samples get Student's t interval and Welch's t-test. Ratio metrics (the user is the unit, a
user's records summed) use the delta method (Deng, Knoblich, Lu 2018, "Applying the Delta Method
in Metric Analytics") with a normal interval. Every sample needs at least 2 values per variant
for a comparison; fewer raise ValueError, as does an empty sample in a summary.
"""

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

TestName = Literal["two_proportion_z", "welch_t", "delta_method_z", "delong_z"]


@dataclass(frozen=True)
class Summary:
    """One variant: count, mean, per-unit sample variance (ddof=1) and an interval for the mean."""

    n: int
    mean: float
    variance: float
    ci: tuple[float, float]
    standard_error: float


@dataclass(frozen=True)
class Comparison:
    """Treatment minus control: difference, interval, test and the difference's variance."""

    difference: float
    ci: tuple[float, float]
    p_value: float
    statistic: float
    test: TestName
    relative_difference: float | None
    variance: float


def as_values(values: ArrayLike, what: str = "values") -> NDArray[np.float64]:
    """A 1-D float array; ValueError if it is not 1-D or holds NaN or infinity."""
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinity")
    return array


def is_binary(values: NDArray[np.float64]) -> bool:
    """Whether every value is 0 or 1 (and there is at least one)."""
    return values.size > 0 and bool(np.all((values == 0) | (values == 1)))


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    return float(stats.norm.ppf(1 - alpha / 2))


def summarize(values: ArrayLike, *, alpha: float = 0.05) -> Summary:
    """Mean with a Wilson interval for 0/1 data, a t-interval otherwise.

    One value gives variance 0 and, for non-0/1 data, the interval (-inf, inf).
    """
    array = as_values(values)
    n = array.size
    if n == 0:
        raise ValueError("no values to summarize")
    z = _z(alpha)
    mean = float(np.mean(array))
    variance = float(np.var(array, ddof=1)) if n > 1 else 0.0
    if is_binary(array):
        centre = (mean + z * z / (2 * n)) / (1 + z * z / n)
        half = z / (1 + z * z / n) * math.sqrt(mean * (1 - mean) / n + z * z / (4 * n * n))
        return Summary(n, mean, variance, (centre - half, centre + half), math.sqrt(variance / n))
    if n == 1:
        return Summary(n, mean, 0.0, (-math.inf, math.inf), math.inf)
    se = math.sqrt(variance / n)
    half = float(stats.t.ppf(1 - alpha / 2, n - 1)) * se
    return Summary(n, mean, variance, (mean - half, mean + half), se)


def _test(difference: float, se: float, df: float | None = None) -> tuple[float, float]:
    """Statistic and two-sided p-value (normal, or t with df); zero se gives 0/1 or inf/0."""
    if se == 0:
        return (0.0, 1.0) if difference == 0 else (math.copysign(math.inf, difference), 0.0)
    statistic = difference / se
    tail = stats.norm.sf(abs(statistic)) if df is None else stats.t.sf(abs(statistic), df)
    return statistic, float(min(1.0, 2 * tail))


def _relative(difference: float, baseline: float) -> float | None:
    return difference / baseline if baseline != 0 else None


def _check_sizes(treatment: NDArray[np.float64], control: NDArray[np.float64]) -> None:
    for what, array in (("treatment", treatment), ("control", control)):
        if array.size < 2:
            raise ValueError(
                f"{what} has {array.size} value(s); a comparison needs at least 2 per variant"
            )


def compare_means(treatment: ArrayLike, control: ArrayLike, *, alpha: float = 0.05) -> Comparison:
    """Treatment mean minus control mean: two-proportion z for 0/1 data, else Welch's t.

    A zero standard error gives statistic 0 and p-value 1 when the means are equal, else
    statistic +-inf and p-value 0 (scipy would return NaN).
    """
    t, c = as_values(treatment, "treatment"), as_values(control, "control")
    _check_sizes(t, c)
    z = _z(alpha)
    nt, nc = t.size, c.size
    mt, mc = float(np.mean(t)), float(np.mean(c))
    difference = mt - mc
    if is_binary(t) and is_binary(c):
        pooled = (mt * nt + mc * nc) / (nt + nc)
        pooled_se = math.sqrt(pooled * (1 - pooled) * (1 / nt + 1 / nc))
        statistic, p_value = _test(difference, pooled_se)
        variance = mt * (1 - mt) / nt + mc * (1 - mc) / nc
        half = z * math.sqrt(variance)
        return Comparison(
            difference,
            (difference - half, difference + half),
            p_value,
            statistic,
            "two_proportion_z",
            _relative(difference, mc),
            variance,
        )
    vt, vc = float(np.var(t, ddof=1)) / nt, float(np.var(c, ddof=1)) / nc
    variance = vt + vc
    if variance == 0:
        statistic, p_value = _test(difference, 0.0)
        return Comparison(
            difference,
            (difference, difference),
            p_value,
            statistic,
            "welch_t",
            _relative(difference, mc),
            0.0,
        )
    df = variance**2 / (vt**2 / (nt - 1) + vc**2 / (nc - 1))
    statistic, p_value = _test(difference, math.sqrt(variance), df)
    half = float(stats.t.ppf(1 - alpha / 2, df)) * math.sqrt(variance)
    return Comparison(
        difference,
        (difference - half, difference + half),
        p_value,
        statistic,
        "welch_t",
        _relative(difference, mc),
        variance,
    )


def normal_comparison(
    difference: float, variance: float, baseline: float, test: TestName, *, alpha: float = 0.05
) -> Comparison:
    """A z-test and normal interval for a difference with a known variance."""
    half = _z(alpha) * math.sqrt(variance)
    statistic, p_value = _test(difference, math.sqrt(variance))
    return Comparison(
        difference,
        (difference - half, difference + half),
        p_value,
        statistic,
        test,
        _relative(difference, baseline),
        variance,
    )


def _ratio_parts(
    numerators: ArrayLike, denominators: ArrayLike, what: str
) -> tuple[int, float, float]:
    """Users, ratio of means, and the per-user variance of the linearised ratio (ddof=1)."""
    num = as_values(numerators, f"{what} numerators")
    den = as_values(denominators, f"{what} denominators")
    if num.shape != den.shape:
        raise ValueError(f"{what}: {num.size} numerators but {den.size} denominators")
    if np.any(den < 0):
        raise ValueError(f"{what}: denominators must be >= 0")
    if num.size == 0 or float(np.mean(den)) == 0:
        raise ValueError(f"{what}: no units with records (every denominator is 0)")
    mean_den = float(np.mean(den))
    ratio = float(np.mean(num)) / mean_den
    # Var(mean(num)/mean(den)) ~ Var(num - ratio * den) / (n * mean(den)^2) (Deng et al. 2018).
    linear = (num - ratio * den) / mean_den
    per_unit = float(np.var(linear, ddof=1)) if num.size > 1 else 0.0
    return num.size, ratio, per_unit


def ratio_summary(
    numerators: ArrayLike, denominators: ArrayLike, *, alpha: float = 0.05
) -> Summary:
    """sum(numerators) / sum(denominators) with a delta-method normal interval.

    `variance` is the per-unit variance of the linearised ratio, so variance / n is the
    delta-method variance of the ratio. One unit gives variance 0 and the interval (-inf, inf).
    """
    n, ratio, per_unit = _ratio_parts(numerators, denominators, "sample")
    if n == 1:
        return Summary(n, ratio, 0.0, (-math.inf, math.inf), math.inf)
    se = math.sqrt(per_unit / n)
    half = _z(alpha) * se
    return Summary(n, ratio, per_unit, (ratio - half, ratio + half), se)


def compare_ratio(
    treatment_numerators: ArrayLike,
    treatment_denominators: ArrayLike,
    control_numerators: ArrayLike,
    control_denominators: ArrayLike,
    *,
    alpha: float = 0.05,
) -> Comparison:
    """Difference of two ratio metrics (ratio of means), delta-method z-test and interval."""
    nt, rt, vt = _ratio_parts(treatment_numerators, treatment_denominators, "treatment")
    nc, rc, vc = _ratio_parts(control_numerators, control_denominators, "control")
    for what, n in (("treatment", nt), ("control", nc)):
        if n < 2:
            raise ValueError(f"{what} has {n} unit(s); a comparison needs at least 2 per variant")
    return normal_comparison(rt - rc, vt / nt + vc / nc, rc, "delta_method_z", alpha=alpha)
