"""Feature drift: does a feature's distribution now differ from its reference distribution?

Numeric features: the two-sample Kolmogorov-Smirnov test and the population stability index
(PSI) over the reference's quantile bins. Categorical features: the chi-square test of the 2 x k
table of counts and the PSI over categories.

Thresholds are industry conventions, not theorems: PSI < 0.1 stable, 0.1-0.2 moderate shift,
>= 0.2 major shift (from credit-scoring practice; Yurdakul 2018, "Statistical Properties of
Population Stability Index"); a test p-value below 0.01 is treated as drift. A feature is
drifted when its PSI reaches 0.2 or its test's p-value falls below 0.01. With very large samples
the tests flag differences too small to matter; the PSI does not grow with sample size.

Empty bins: a bin's share is replaced by PSI_EPSILON = 1e-4 when it is 0, so the PSI stays finite
(an empty bin on one side then contributes about share * ln(share / 1e-4)).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from gateway.core.stats.compare import as_values

PSI_MODERATE = 0.1
PSI_DRIFT = 0.2
P_VALUE_DRIFT = 0.01
PSI_EPSILON = 1e-4


class PsiLevel(StrEnum):
    """How far the PSI says a distribution moved."""

    STABLE = "stable"
    MODERATE = "moderate"
    MAJOR = "major"


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's drift figures; fields of the other kind's test are None."""

    name: str | None
    kind: Literal["numeric", "categorical"]
    psi: float
    psi_level: PsiLevel
    drifted: bool
    ks_statistic: float | None = None
    ks_p_value: float | None = None
    chi2: float | None = None
    chi2_p_value: float | None = None


def psi(reference_shares: ArrayLike, current_shares: ArrayLike) -> float:
    """Sum of (current - reference) * ln(current / reference), 0 shares replaced by PSI_EPSILON."""
    ref = np.asarray(reference_shares, dtype=np.float64)
    cur = np.asarray(current_shares, dtype=np.float64)
    ref = np.where(ref == 0, PSI_EPSILON, ref)
    cur = np.where(cur == 0, PSI_EPSILON, cur)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def psi_level(value: float) -> PsiLevel:
    """The conventional reading of a PSI value."""
    if value >= PSI_DRIFT:
        return PsiLevel.MAJOR
    return PsiLevel.MODERATE if value >= PSI_MODERATE else PsiLevel.STABLE


def quantile_edges(reference: ArrayLike, bins: int = 10) -> NDArray[np.float64]:
    """Inner bin edges at the reference's quantiles; tied quantiles collapse into one edge.

    Bins are right-closed: (-inf, e1], (e1, e2], ..., (ek, inf).
    """
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    values = as_values(reference, "reference")
    if values.size == 0:
        raise ValueError("reference has no values")
    edges = np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])
    return np.unique(edges)


def binned_shares(values: ArrayLike, edges: ArrayLike) -> NDArray[np.float64]:
    """Each right-closed bin's share of the values."""
    array = np.asarray(values, dtype=np.float64)
    if array.size == 0:
        raise ValueError("no values to bin")
    counts = np.bincount(
        np.searchsorted(np.asarray(edges, dtype=np.float64), array, side="left"),
        minlength=np.size(edges) + 1,
    )
    return counts / array.size


def numeric_drift(
    reference: ArrayLike, current: ArrayLike, *, bins: int = 10, name: str | None = None
) -> FeatureDrift:
    """KS test (scipy.stats.ks_2samp) and PSI over the reference's quantile bins."""
    ref = as_values(reference, "reference")
    cur = as_values(current, "current")
    if ref.size == 0 or cur.size == 0:
        raise ValueError(
            f"drift needs values on both sides, got {ref.size} reference and {cur.size} current"
        )
    edges = quantile_edges(ref, bins)
    value = psi(binned_shares(ref, edges), binned_shares(cur, edges))
    ks = stats.ks_2samp(ref, cur)
    ks_statistic, ks_p_value = float(ks.statistic), float(ks.pvalue)
    return FeatureDrift(
        name,
        "numeric",
        value,
        psi_level(value),
        value >= PSI_DRIFT or ks_p_value < P_VALUE_DRIFT,
        ks_statistic=ks_statistic,
        ks_p_value=ks_p_value,
    )


def categorical_drift(
    reference_counts: Mapping[str, int],
    current_counts: Mapping[str, int],
    *,
    name: str | None = None,
) -> FeatureDrift:
    """Chi-square test of the 2 x k table (no continuity correction) and PSI over categories.

    A category missing on one side counts 0 there; categories at 0 on both sides are dropped.
    A single category left gives chi2 0 and p-value 1.
    """
    categories = sorted(set(reference_counts) | set(current_counts))
    table = np.array(
        [
            [reference_counts.get(category, 0) for category in categories],
            [current_counts.get(category, 0) for category in categories],
        ],
        dtype=np.float64,
    ).reshape(2, len(categories))
    if np.any(table < 0):
        raise ValueError("category counts must be >= 0")
    table = table[:, table.sum(axis=0) > 0]
    totals = table.sum(axis=1)
    if totals[0] == 0 or totals[1] == 0:
        raise ValueError(
            f"drift needs counts on both sides, got {totals[0]:g} reference "
            f"and {totals[1]:g} current"
        )
    value = psi(table[0] / totals[0], table[1] / totals[1])
    if table.shape[1] < 2:
        chi2, p_value = 0.0, 1.0
    else:
        result = stats.chi2_contingency(table, correction=False)
        chi2, p_value = float(result.statistic), float(result.pvalue)
    return FeatureDrift(
        name,
        "categorical",
        value,
        psi_level(value),
        value >= PSI_DRIFT or p_value < P_VALUE_DRIFT,
        chi2=chi2,
        chi2_p_value=p_value,
    )
