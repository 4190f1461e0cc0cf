"""CUPED: lower outcome variance with a pre-experiment covariate (Deng, Xu, Kohavi, Walker 2013).

Each outcome Y becomes Y - theta (X - mean(X)), with X a covariate the variant cannot affect
(the same user's outcome before the experiment, say). theta is the pooled within-variant slope,
sum of (Y - mean_v Y)(X - mean_v X) over sum of (X - mean_v X)^2, i.e. the OLS slope of Y on X
with one intercept per variant, so a treatment effect on Y does not leak into theta. mean(X) is
pooled over all variants, so every variant's adjusted mean stays an unbiased estimate of its
mean. The within-variant variance shrinks by the factor 1 - rho^2 (rho: within-variant
correlation of Y and X). A covariate with no spread gives theta 0: nothing is adjusted.
"""

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from gateway.core.stats.compare import as_values


@dataclass(frozen=True)
class CupedResult:
    """Adjusted outcomes per variant, theta, and the share of within-variant variance removed."""

    adjusted: dict[str, NDArray[np.float64]]
    theta: float
    variance_reduction: float


def cuped(
    outcomes_by_variant: Mapping[str, ArrayLike], covariates_by_variant: Mapping[str, ArrayLike]
) -> CupedResult:
    """CUPED-adjusted outcomes, the pooled theta and the variance reduction.

    Variants must match between the mappings and each variant's outcomes and covariates must
    have the same length; ValueError otherwise. Empty variants stay empty.
    """
    if set(outcomes_by_variant) != set(covariates_by_variant):
        raise ValueError(
            f"outcomes for {sorted(outcomes_by_variant)} but covariates for "
            f"{sorted(covariates_by_variant)}"
        )
    ys: dict[str, NDArray[np.float64]] = {}
    xs: dict[str, NDArray[np.float64]] = {}
    for name in outcomes_by_variant:
        ys[name] = as_values(outcomes_by_variant[name], f"{name} outcomes")
        xs[name] = as_values(covariates_by_variant[name], f"{name} covariates")
        if ys[name].shape != xs[name].shape:
            raise ValueError(f"{name}: {ys[name].size} outcomes but {xs[name].size} covariates")
    sxy = sxx = syy = 0.0
    x_sum, total = 0.0, 0
    for name, y in ys.items():
        x = xs[name]
        if y.size == 0:
            continue
        dx, dy = x - np.mean(x), y - np.mean(y)
        sxy += float(np.dot(dx, dy))
        sxx += float(np.dot(dx, dx))
        syy += float(np.dot(dy, dy))
        x_sum += float(np.sum(x))
        total += x.size
    theta = sxy / sxx if sxx > 0 else 0.0
    x_mean = x_sum / total if total else 0.0
    adjusted = {name: y - theta * (xs[name] - x_mean) for name, y in ys.items()}
    # Residual within-variant sum of squares is syy - theta * sxy (OLS with variant intercepts).
    reduction = theta * sxy / syy if syy > 0 else 0.0
    return CupedResult(adjusted, theta, reduction)


def cuped_adjust(
    outcomes_by_variant: Mapping[str, ArrayLike], covariates_by_variant: Mapping[str, ArrayLike]
) -> dict[str, NDArray[np.float64]]:
    """CUPED-adjusted outcomes per variant (see `cuped` for theta and the variance reduction)."""
    return cuped(outcomes_by_variant, covariates_by_variant).adjusted
