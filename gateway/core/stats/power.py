"""Sample sizes: how many records per variant a comparison needs to detect an effect.

Fixed horizon: the two-sided z-test's normal approximation, solved exactly (both rejection tails)
so it equals statsmodels' NormalIndPower. `ratio` is control records per treatment record; the
functions return the treatment's count, and the control needs ratio times as many. The outcome's
variance is given directly, or for a proportion each variant's own Bernoulli variance at its
planned rate (control: baseline_rate p0; treatment: p1 = p0 + mde), combined into the one
variance s2 = (ratio * p1 (1 - p1) + p0 (1 - p0)) / (ratio + 1) that gives the difference's
variance s2 (1 + 1 / ratio) / n (the unpooled normal approximation).

Sequential (mSPRT, see gateway.core.stats.sequential): the smallest n at which the always-valid
interval, looked at only once at n, excludes 0 in the effect's direction with the wanted power.
Looking earlier as well can only add detections, so the plan is conservative.
"""

import math

from scipy import optimize, stats

from gateway.core.stats.sequential import always_valid_interval, default_tau2


def outcome_variance(
    mde: float, *, variance: float | None, baseline_rate: float | None, ratio: float = 1.0
) -> float:
    """The per-record variance a plan uses: given, or the proportions' combined variance."""
    if (variance is None) == (baseline_rate is None):
        raise ValueError("give exactly one of variance and baseline_rate")
    if baseline_rate is not None:
        planned = baseline_rate + mde
        if not 0 < baseline_rate < 1 or not 0 < planned < 1:
            raise ValueError(
                f"baseline_rate and baseline_rate + mde must be between 0 and 1, "
                f"got {baseline_rate} and {planned}"
            )
        treatment, control = planned * (1 - planned), baseline_rate * (1 - baseline_rate)
        return (ratio * treatment + control) / (ratio + 1)
    assert variance is not None
    if not 0 < variance < math.inf:
        raise ValueError(f"variance must be finite and > 0, got {variance}")
    return variance


def _check(mde: float, alpha: float, power: float, ratio: float) -> None:
    if not math.isfinite(mde) or mde == 0:
        raise ValueError(f"mde must be finite and non-zero, got {mde}")
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must be between 0 and 1, got {alpha} and {power}")
    if not 0 < ratio < math.inf:
        raise ValueError(f"ratio must be finite and > 0, got {ratio}")


def _fixed_power(n: float, effect: float, alpha: float, ratio: float) -> float:
    """Power of the two-sided z-test with n treatment records (both tails)."""
    shift = effect * math.sqrt(n * ratio / (1 + ratio))
    crit = float(stats.norm.isf(alpha / 2))
    return float(stats.norm.sf(crit - shift) + stats.norm.cdf(-crit - shift))


def required_samples(
    mde: float,
    *,
    variance: float | None = None,
    baseline_rate: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> float:
    """Treatment records a fixed-horizon two-sided z-test needs, before rounding up."""
    _check(mde, alpha, power, ratio)
    effect = abs(mde) / math.sqrt(
        outcome_variance(mde, variance=variance, baseline_rate=baseline_rate, ratio=ratio)
    )
    # The one-tail closed form is an upper bound; the other tail only lowers it a little.
    upper = ((stats.norm.isf(alpha / 2) + stats.norm.ppf(power)) / effect) ** 2
    upper *= (1 + ratio) / ratio
    if _fixed_power(upper, effect, alpha, ratio) <= power:
        return float(upper)
    root = optimize.brentq(
        lambda n: _fixed_power(n, effect, alpha, ratio) - power,
        1e-12,
        float(upper),
        xtol=1e-14,
        rtol=4 * 2.220446049250313e-16,
    )
    return float(root)


def samples_per_variant(
    mde: float,
    *,
    variance: float | None = None,
    baseline_rate: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> int:
    """Treatment records a fixed-horizon two-sided z-test needs (control: ratio times more)."""
    n = required_samples(
        mde, variance=variance, baseline_rate=baseline_rate, alpha=alpha, power=power, ratio=ratio
    )
    return max(2, math.ceil(n - 1e-9))


def additional_samples(
    mde: float,
    current_n: int,
    *,
    variance: float | None = None,
    baseline_rate: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
) -> int:
    """Treatment records still to collect for the fixed-horizon plan; 0 once reached."""
    if current_n < 0:
        raise ValueError(f"current_n must be >= 0, got {current_n}")
    needed = samples_per_variant(
        mde, variance=variance, baseline_rate=baseline_rate, alpha=alpha, power=power, ratio=ratio
    )
    return max(0, needed - current_n)


def sequential_samples_per_variant(
    mde: float,
    *,
    variance: float | None = None,
    baseline_rate: float | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
    ratio: float = 1.0,
    tau2: float | None = None,
) -> int:
    """Treatment records for the mSPRT's interval to exclude 0 with the wanted power.

    tau2 defaults to mde squared. At n, the estimate's variance is V = s2 (1 + 1/ratio) / n and
    the interval excludes 0 when the estimate passes its half-width h(V): power is
    P(N(|mde|, V) > h(V)). Always more than the fixed-horizon plan.
    """
    _check(mde, alpha, power, ratio)
    s2 = outcome_variance(mde, variance=variance, baseline_rate=baseline_rate, ratio=ratio)
    mixture = default_tau2(mde) if tau2 is None else tau2

    def shortfall(n: float) -> float:
        v = s2 * (1 + 1 / ratio) / n
        half = always_valid_interval(0.0, v, mixture, alpha)[1]
        return float(stats.norm.sf((half - abs(mde)) / math.sqrt(v))) - power

    low = required_samples(mde, variance=s2, alpha=alpha, power=power, ratio=ratio)
    if shortfall(low) >= 0:
        return max(2, math.ceil(low - 1e-9))
    high = 2 * low
    while shortfall(high) < 0:
        low, high = high, 2 * high
    n = optimize.brentq(shortfall, low, high, xtol=1e-9)
    return max(2, math.ceil(float(n) - 1e-9))
