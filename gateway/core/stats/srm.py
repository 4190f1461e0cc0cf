"""Sample ratio mismatch: do the observed counts per variant match the split's shares?

A chi-square goodness-of-fit test of the counts against the expected shares. A tiny p-value means
the split itself is broken (a variant dropped or duplicated records), so no comparison of the
variants' outcomes can be trusted. The usual alarm level is p < 0.001 (Fabijan et al. 2019,
"Diagnosing Sample Ratio Mismatch in Online Controlled Experiments").
"""

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import stats

SRM_THRESHOLD = 0.001


@dataclass(frozen=True)
class SrmResult:
    """A chi-square goodness-of-fit test of variant counts against expected shares."""

    statistic: float
    p_value: float
    df: int
    healthy: bool
    observed: dict[str, int]
    expected: dict[str, float]


def sample_ratio_mismatch(
    observed: Mapping[str, int],
    expected_shares: Mapping[str, float],
    *,
    threshold: float = SRM_THRESHOLD,
) -> SrmResult:
    """Chi-square test of counts against shares; unhealthy when p < threshold.

    Shares are normalised to sum to 1. A variant missing from either mapping counts 0 / has
    share 0. Variants with share 0 and count 0 are dropped. A variant with share 0 but a count
    above 0 makes the split unhealthy by itself (statistic inf, p-value 0). With no records at all,
    or a single variant, there is nothing to mismatch: statistic 0, p-value 1, healthy.
    Raises ValueError for negative counts or shares, or shares that are all 0.
    """
    names = sorted(set(observed) | set(expected_shares))
    counts = {name: int(observed.get(name, 0)) for name in names}
    shares = {name: float(expected_shares.get(name, 0.0)) for name in names}
    if any(count < 0 for count in counts.values()):
        raise ValueError(f"counts must be >= 0, got {dict(counts)}")
    if any(share < 0 or not math.isfinite(share) for share in shares.values()):
        raise ValueError(f"shares must be finite and >= 0, got {dict(shares)}")
    share_total = sum(shares.values())
    if share_total <= 0:
        raise ValueError("expected shares are all 0: no variant is meant to get traffic")
    kept = [name for name in names if shares[name] > 0 or counts[name] > 0]
    total = sum(counts[name] for name in kept)
    expected = {name: total * shares[name] / share_total for name in kept}
    kept_counts = {name: counts[name] for name in kept}
    df = len(kept) - 1
    if any(expected[name] == 0 and kept_counts[name] > 0 for name in kept):
        return SrmResult(math.inf, 0.0, df, False, kept_counts, expected)
    if total == 0 or df == 0:
        return SrmResult(0.0, 1.0, df, True, kept_counts, expected)
    result = stats.chisquare(
        [kept_counts[name] for name in kept], [expected[name] for name in kept]
    )
    statistic, p_value = float(result.statistic), float(result.pvalue)
    return SrmResult(statistic, p_value, df, p_value >= threshold, kept_counts, expected)


def time_weighted_shares(intervals: Sequence[tuple[float, Mapping[str, int]]]) -> dict[str, float]:
    """Each variant's expected share, averaged over intervals by their weight.

    Each interval is (weight, the split's weights during it); the weight is a duration or a
    request count. Intervals with weight 0 or whose split weights are all 0 are skipped.
    Raises ValueError when no interval is left, or for a negative weight.
    """
    totals: dict[str, float] = {}
    grand_total = 0.0
    for weight, split in intervals:
        if weight < 0 or any(value < 0 for value in split.values()):
            raise ValueError(f"weights must be >= 0, got {weight} and {dict(split)}")
        split_total = sum(split.values())
        if weight == 0 or split_total == 0:
            continue
        grand_total += weight
        for name, value in split.items():
            totals[name] = totals.get(name, 0.0) + weight * value / split_total
    if grand_total == 0:
        raise ValueError("no interval with a positive weight and a split that sends traffic")
    return {name: total / grand_total for name, total in sorted(totals.items())}
