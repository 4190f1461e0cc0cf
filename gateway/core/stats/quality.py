"""Model quality from (prediction, label) pairs: per-record values and the AUC with its variance.

Mean-decomposable metrics (accuracy, error rate, log loss, Brier score, squared and absolute
error, the outcome's mean) become one value per record, so the variants are compared with
gateway.core.stats.compare like any outcome. The AUC is not a mean of records: its variance is
DeLong's (DeLong, DeLong, Clarke-Pearson 1988), computed from midranks (Sun, Xu 2014). RMSE is
left out: its interval needs the delta method on the MSE, which is not done here.
"""

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import stats

from gateway.core.judging import Metric
from gateway.core.stats.compare import Comparison, as_values, normal_comparison

LOG_LOSS_CLIP = 1e-15
THRESHOLD = 0.5


def _binary_labels(labels: NDArray[np.float64]) -> bool:
    return bool(np.all((labels == 0) | (labels == 1)))


def _predicted_class(
    predictions: NDArray[np.float64], labels: NDArray[np.float64]
) -> NDArray[np.float64]:
    if predictions.ndim == 2:
        return np.asarray(np.argmax(predictions, axis=1), dtype=np.float64)
    in_unit = bool(np.all((predictions >= 0) & (predictions <= 1)))
    if _binary_labels(labels) and in_unit:
        return (predictions > THRESHOLD).astype(np.float64)
    return predictions


def per_record(metric: Metric, predictions: ArrayLike, labels: ArrayLike) -> NDArray[np.float64]:
    """One value per record whose mean is the metric; ValueError for AUC (not a mean).

    Predictions are numbers, or rows of class probabilities (2-D; then labels are class
    indices). Accuracy: for 0/1 labels and predictions within [0, 1], a prediction above 0.5 is
    class 1; rows of probabilities predict their argmax; otherwise prediction == label. Log loss
    clips probabilities to [1e-15, 1 - 1e-15]. Brier: squared error of the probability of class 1,
    or for rows the sum over classes of squared error against the one-hot label.
    """
    metric = Metric(metric)
    y = as_values(labels, "labels")
    if metric is Metric.MEAN:
        return y
    if metric is Metric.AUC:
        raise ValueError("the AUC is not a mean of records; use auc_with_variance")
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim not in (1, 2) or p.shape[0] != y.size:
        raise ValueError(f"{y.size} labels but predictions of shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError("predictions contain NaN or infinity")
    if metric in (Metric.ACCURACY, Metric.ERROR_RATE):
        correct = np.asarray(_predicted_class(p, y) == y, dtype=np.float64)
        return correct if metric is Metric.ACCURACY else 1.0 - correct
    if p.ndim == 2:
        return _per_row_of_probabilities(metric, p, y)
    if metric in (Metric.LOG_LOSS, Metric.BRIER) and not _binary_labels(y):
        raise ValueError(f"{metric} with one probability per record needs 0/1 labels")
    if metric is Metric.LOG_LOSS:
        clipped = np.clip(p, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP)
        return -(y * np.log(clipped) + (1 - y) * np.log1p(-clipped))
    if metric in (Metric.BRIER, Metric.MSE):
        return (p - y) ** 2
    return np.abs(p - y)


def _per_row_of_probabilities(
    metric: Metric, p: NDArray[np.float64], y: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Log loss or Brier score of rows of class probabilities against class-index labels."""
    index = y.astype(np.int64)
    if not np.array_equal(index, y) or np.any(index < 0) or np.any(index >= p.shape[1]):
        raise ValueError(f"labels must be class indices 0..{p.shape[1] - 1} for rows")
    if metric is Metric.LOG_LOSS:
        chosen = p[np.arange(y.size), index]
        return -np.log(np.clip(chosen, LOG_LOSS_CLIP, 1 - LOG_LOSS_CLIP))
    if metric is Metric.BRIER:
        onehot = np.zeros_like(p)
        onehot[np.arange(y.size), index] = 1.0
        return np.asarray(np.sum((p - onehot) ** 2, axis=1), dtype=np.float64)
    raise ValueError(f"{metric} needs one prediction per record, not rows of probabilities")


def auc_with_variance(scores: ArrayLike, labels: ArrayLike) -> tuple[float, float]:
    """The ROC AUC (ties count one half) and DeLong's variance of it.

    Needs 0/1 labels with at least 2 of each class; ValueError otherwise.
    """
    x = as_values(scores, "scores")
    y = as_values(labels, "labels")
    if x.shape != y.shape:
        raise ValueError(f"{x.size} scores but {y.size} labels")
    if not _binary_labels(y):
        raise ValueError("the AUC needs 0/1 labels")
    positives, negatives = x[y == 1], x[y == 0]
    m, n = positives.size, negatives.size
    if m < 2 or n < 2:
        raise ValueError(
            f"the AUC's variance needs at least 2 positives and 2 negatives, got {m} and {n}"
        )
    all_ranks = stats.rankdata(np.concatenate([positives, negatives]))
    positive_ranks = stats.rankdata(positives)
    negative_ranks = stats.rankdata(negatives)
    # Structural components: V10 (per positive) and V01 (per negative), from midranks.
    v10 = (all_ranks[:m] - positive_ranks) / n
    v01 = 1.0 - (all_ranks[m:] - negative_ranks) / m
    auc = float(np.mean(v10))
    variance = float(np.var(v10, ddof=1)) / m + float(np.var(v01, ddof=1)) / n
    return auc, variance


def compare_auc(
    treatment_scores: ArrayLike,
    treatment_labels: ArrayLike,
    control_scores: ArrayLike,
    control_labels: ArrayLike,
    *,
    alpha: float = 0.05,
) -> Comparison:
    """Treatment AUC minus control AUC: z-test on independent samples, DeLong variances."""
    treatment_auc, treatment_var = auc_with_variance(treatment_scores, treatment_labels)
    control_auc, control_var = auc_with_variance(control_scores, control_labels)
    return normal_comparison(
        treatment_auc - control_auc,
        treatment_var + control_var,
        control_auc,
        "delong_z",
        alpha=alpha,
    )
