"""Challenger against champion on joined outcomes: per-unit values in, the report's figures out.

Every statistic is gateway.core.stats's; this module only shapes the data for it. A record's value
is its outcome, or with `--metric` its quality against the outcome as label (its own first
logged prediction scored by `quality.per_record`). When records share a user, the user is the
unit: each user's values are summed over their records (numerator) and counted (denominator), and
variants are compared as ratio metrics by the delta method. The AUC is compared record by record
(DeLong). With a covariate, per-unit means are CUPED-adjusted and compared as means.

The always-valid (mSPRT) figures use the mixture variance tau2 = MDE^2 with `--mde`, otherwise
(0.1 s)^2 with s the pooled per-unit standard deviation of the values: effects of a tenth of a
standard deviation are detected soonest.
"""

import math
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from gateway.core.judging import Metric
from gateway.core.stats.compare import (
    compare_means,
    compare_ratio,
    ratio_summary,
    summarize,
)
from gateway.core.stats.cuped import cuped_adjust
from gateway.core.stats.power import samples_per_variant
from gateway.core.stats.quality import auc_with_variance, compare_auc, per_record
from gateway.core.stats.sequential import (
    always_valid_interval,
    always_valid_p_value,
    default_tau2,
)
from gateway.observe.report.data import ReportInputError
from gateway.observe.report.outcomes import Joined, VariantRows

TAU_SHARE_OF_SD: Final = 0.1
_AUC_DEFAULT_MDE: Final = 0.02

Units = tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]


def _unit_values(values: NDArray[np.float64], rows: VariantRows) -> Units:
    """Per-unit sums of values, record counts and mean covariates."""
    _, inverse = np.unique(rows.units, return_inverse=True)
    sums = np.asarray(np.bincount(inverse, weights=values), dtype=np.float64)
    counts = np.bincount(inverse).astype(np.float64)
    covariates = np.asarray(
        np.bincount(inverse, weights=np.nan_to_num(rows.covariates)), dtype=np.float64
    )
    covariates = covariates / counts
    return sums, counts, covariates


def _record_values(metric: Metric, rows: VariantRows) -> tuple[NDArray[np.float64], VariantRows]:
    """Each record's value for the metric, and the rows it was computed from."""
    if metric is Metric.MEAN:
        return rows.outcomes, rows
    keep = ~np.isnan(rows.predictions)
    kept = VariantRows(
        rows.units[keep], rows.predictions[keep], rows.outcomes[keep], rows.covariates[keep]
    )
    if metric is Metric.AUC:
        return kept.predictions, kept
    try:
        return per_record(metric, kept.predictions, kept.outcomes), kept
    except ValueError as exc:
        raise ReportInputError(f"--metric {metric}: {exc}") from exc


def compare_variants(
    joined: Joined,
    *,
    champion: str | None,
    challenger: str | None,
    metric: Metric,
    alpha: float,
    mde: float | None,
    covariate: bool,
) -> dict[str, Any]:
    """Per-variant summaries, the challenger-minus-champion comparison and the verdict's inputs."""
    unit = "record" if metric is Metric.AUC else joined.unit
    notes: list[str] = []
    values: dict[str, NDArray[np.float64]] = {}
    rows: dict[str, VariantRows] = {}
    summaries: dict[str, Any] = {}
    per_unit: dict[str, Units] = {}  # per-unit sums, counts and covariates, made once a variant
    for name, variant_rows in joined.rows.items():
        values[name], rows[name] = _record_values(metric, variant_rows)
        if values[name].size and (unit == "user" or covariate) and metric is not Metric.AUC:
            per_unit[name] = _unit_values(values[name], rows[name])
        summaries[name] = _summary(
            metric, unit, values[name], rows[name], per_unit.get(name), alpha
        )
    meta = {
        "metric": metric.value,
        "unit": unit,
        "outcome_rows": joined.outcome_rows,
        "unmatched_rows": joined.unmatched,
        "covariate": covariate,
    }
    if unit == "user":
        notes.append("Records share users, so the user is the unit (delta method on ratios).")
    result: dict[str, Any] = {
        "outcome": meta,
        "summaries": summaries,
        "comparisons": [],
        "verdict_inputs": None,
        "notes": notes,
    }
    if champion is None or challenger is None:
        return result
    if min(len(values.get(name, ())) for name in (champion, challenger)) < 2:
        notes.append("Fewer than 2 joined outcomes in a variant: no comparison.")
        return result
    t_rows, c_rows = rows[challenger], rows[champion]
    t_values, c_values = values[challenger], values[champion]
    if metric is Metric.AUC:
        comparison = compare_auc(t_values, t_rows.outcomes, c_values, c_rows.outcomes, alpha=alpha)
        spread = None
    elif covariate:
        if np.isnan(t_rows.covariates).any() or np.isnan(c_rows.covariates).any():
            raise ReportInputError("--covariate: some joined outcome rows have no covariate")
        (t_sum, t_n, t_cov), (c_sum, c_n, c_cov) = per_unit[challenger], per_unit[champion]
        adjusted = cuped_adjust({"t": t_sum / t_n, "c": c_sum / c_n}, {"t": t_cov, "c": c_cov})
        comparison = compare_means(adjusted["t"], adjusted["c"], alpha=alpha)
        spread = float(np.std(np.concatenate([adjusted["t"], adjusted["c"]]), ddof=1))
        notes.append("CUPED: per-unit means adjusted by the covariate before comparing.")
    elif unit == "user":
        t_sum, t_n, _ = per_unit[challenger]
        c_sum, c_n, _ = per_unit[champion]
        comparison = compare_ratio(t_sum, t_n, c_sum, c_n, alpha=alpha)
        spread = float(np.std(np.concatenate([t_sum / t_n, c_sum / c_n]), ddof=1))
    else:
        comparison = compare_means(t_values, c_values, alpha=alpha)
        spread = float(np.std(np.concatenate([t_values, c_values]), ddof=1))
    tau2 = _tau2(mde, spread, metric)
    sequential_p = always_valid_p_value(comparison.difference, comparison.variance, tau2)
    sequential_ci = always_valid_interval(comparison.difference, comparison.variance, tau2, alpha)
    planned = _planned(mde, summaries[champion], alpha, metric)
    units = (summaries[challenger]["n"], summaries[champion]["n"])
    reached = planned is None or min(units) >= planned
    result["comparisons"] = [
        {
            "variant": challenger,
            "baseline": champion,
            "metric": metric.value,
            "unit": unit,
            "test": comparison.test,
            "difference": comparison.difference,
            "variance": comparison.variance,
            "relative_difference": comparison.relative_difference,
            "ci": list(comparison.ci),
            "p_value": comparison.p_value,
            "sequential_p_value": sequential_p,
            "sequential_ci": list(sequential_ci),
            "tau2": tau2,
            "cuped": covariate and metric is not Metric.AUC,
            "mde": mde,
            "samples_per_variant": planned,
            "additional_samples": None if planned is None else max(0, planned - min(units)),
        }
    ]
    result["verdict_inputs"] = {
        "comparison": comparison,
        "sequential_interval": sequential_ci,
        "min_samples_reached": reached,
    }
    return result


def _summary(
    metric: Metric,
    unit: str,
    values: NDArray[np.float64],
    rows: VariantRows,
    per_unit: Units | None,
    alpha: float,
) -> dict[str, Any] | None:
    if values.size == 0:
        return None
    if metric is Metric.AUC:
        try:
            auc, variance = auc_with_variance(values, rows.outcomes)
        except ValueError:
            return {"n": int(values.size), "mean": None, "ci": [None, None]}
        half = float(stats.norm.ppf(1 - alpha / 2)) * math.sqrt(variance)
        return {"n": int(values.size), "mean": auc, "ci": [auc - half, auc + half]}
    if unit == "user" and per_unit is not None:
        sums, counts, _ = per_unit
        summary = ratio_summary(sums, counts, alpha=alpha)
    else:
        summary = summarize(values, alpha=alpha)
    return {
        "n": summary.n,
        "records": int(values.size),
        "mean": summary.mean,
        "ci": list(summary.ci),
        "variance": summary.variance,
    }


def _tau2(mde: float | None, spread: float | None, metric: Metric) -> float:
    if mde is not None:
        return default_tau2(mde)
    if spread is None or not spread > 0:
        return default_tau2(_AUC_DEFAULT_MDE if metric is Metric.AUC else 1.0)
    return default_tau2(TAU_SHARE_OF_SD * spread)


def _planned(
    mde: float | None, control: dict[str, Any] | None, alpha: float, metric: Metric
) -> int | None:
    """Units per variant a fixed-horizon test needs to detect `mde` with 80% power."""
    if mde is None or control is None or metric is Metric.AUC:
        return None
    variance = control.get("variance")
    if not variance or not variance > 0:
        return None
    return samples_per_variant(mde, variance=float(variance), alpha=alpha, power=0.8)
