"""Model quality: per-record metrics against sklearn, and DeLong's AUC variance."""

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    log_loss,
    mean_absolute_error,
    mean_squared_error,
    roc_auc_score,
)

from gateway.core.judging import Metric, higher_is_better
from gateway.core.stats.quality import auc_with_variance, compare_auc, per_record


def _binary(seed: int, n: int, signal: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and probabilities from a logistic model with some signal."""
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(float)
    logits = signal * (labels - 0.3) * 2 + rng.normal(0, 1, n)
    return 1 / (1 + np.exp(-logits)), labels


@pytest.mark.parametrize(
    ("metric", "higher"),
    [
        (Metric.ACCURACY, True),
        (Metric.AUC, True),
        (Metric.MEAN, True),
        (Metric.ERROR_RATE, False),
        (Metric.LOG_LOSS, False),
        (Metric.BRIER, False),
        (Metric.MSE, False),
        (Metric.MAE, False),
    ],
)
def test_direction_of_each_metric(metric: Metric, higher: bool) -> None:
    assert higher_is_better(metric) is higher
    assert higher_is_better(Metric(metric.value)) is higher


def test_binary_metrics_average_to_sklearn_values() -> None:
    probabilities, labels = _binary(1, 2000)
    predicted = (probabilities > 0.5).astype(float)
    cases = [
        (Metric.ACCURACY, accuracy_score(labels, predicted)),
        (Metric.ERROR_RATE, 1 - accuracy_score(labels, predicted)),
        (Metric.LOG_LOSS, log_loss(labels, probabilities)),
        (Metric.BRIER, brier_score_loss(labels, probabilities)),
    ]
    for metric, expected in cases:
        values = per_record(metric, probabilities, labels)
        assert values.shape == labels.shape
        assert float(np.mean(values)) == pytest.approx(expected, rel=1e-9)


def test_class_predictions_and_their_probabilities_give_the_same_accuracy() -> None:
    probabilities, labels = _binary(2, 500)
    classes = (probabilities > 0.5).astype(float)
    assert np.array_equal(
        per_record(Metric.ACCURACY, classes, labels),
        per_record(Metric.ACCURACY, probabilities, labels),
    )


def test_rows_of_probabilities_use_argmax_and_the_label_index() -> None:
    rng = np.random.default_rng(3)
    rows = rng.dirichlet([1.0, 1.0, 1.0], 400)
    labels = rng.integers(0, 3, 400).astype(float)
    accuracy = per_record(Metric.ACCURACY, rows, labels)
    assert float(np.mean(accuracy)) == pytest.approx(accuracy_score(labels, rows.argmax(axis=1)))
    loss = per_record(Metric.LOG_LOSS, rows, labels)
    assert float(np.mean(loss)) == pytest.approx(log_loss(labels, rows, labels=[0, 1, 2]), rel=1e-9)
    brier = per_record(Metric.BRIER, rows, labels)
    onehot = np.eye(3)[labels.astype(int)]
    assert np.allclose(brier, ((rows - onehot) ** 2).sum(axis=1))


def test_class_labels_other_than_zero_one_compare_for_equality() -> None:
    values = per_record(Metric.ACCURACY, [2.0, 3.0, 7.0], [2.0, 3.0, 5.0])
    assert values.tolist() == [1.0, 1.0, 0.0]


def test_regression_metrics_average_to_sklearn_values() -> None:
    rng = np.random.default_rng(4)
    labels = rng.normal(10, 3, 1000)
    predictions = labels + rng.normal(0.5, 1, 1000)
    mse = per_record(Metric.MSE, predictions, labels)
    mae = per_record(Metric.MAE, predictions, labels)
    assert float(np.mean(mse)) == pytest.approx(mean_squared_error(labels, predictions), rel=1e-9)
    assert float(np.mean(mae)) == pytest.approx(mean_absolute_error(labels, predictions), rel=1e-9)


def test_mean_is_the_outcome_itself() -> None:
    assert per_record(Metric.MEAN, [9.0, 9.0, 9.0], [1.0, 0.0, 2.5]).tolist() == [1.0, 0.0, 2.5]


def test_log_loss_is_clipped_so_a_confident_mistake_stays_finite() -> None:
    values = per_record(Metric.LOG_LOSS, [0.0, 1.0], [1.0, 0.0])
    assert np.all(np.isfinite(values))
    assert values == pytest.approx([-np.log(1e-15)] * 2, rel=1e-4)


@pytest.mark.parametrize(
    ("metric", "predictions", "labels", "message"),
    [
        (Metric.AUC, [0.1, 0.9], [0.0, 1.0], "not a mean"),
        (Metric.MSE, [0.1, 0.9, 0.3], [0.0, 1.0], "2 labels"),
        (Metric.LOG_LOSS, [0.1, 0.9], [0.0, 2.0], "0/1 labels"),
        (Metric.LOG_LOSS, [[0.5, 0.5]], [2.0], "class indices"),
        (Metric.MSE, [[0.5, 0.5]], [1.0], "one prediction per record"),
        (Metric.MSE, [np.nan], [1.0], "NaN"),
    ],
)
def test_unusable_predictions_raise(
    metric: Metric, predictions: object, labels: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        per_record(metric, predictions, labels)  # type: ignore[arg-type]


def _brute_force_delong(scores: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    positives, negatives = scores[labels == 1], scores[labels == 0]
    psi = (positives[:, None] > negatives[None, :]) + 0.5 * (
        positives[:, None] == negatives[None, :]
    )
    v10, v01 = psi.mean(axis=1), psi.mean(axis=0)
    return float(psi.mean()), v10.var(ddof=1) / len(positives) + v01.var(ddof=1) / len(negatives)


@pytest.mark.parametrize(
    ("seed", "n", "rounded"),
    [(5, 300, False), (6, 1000, False), (7, 40, True), (8, 500, True)],
)
def test_auc_equals_sklearn_and_variance_equals_structural_components(
    seed: int, n: int, rounded: bool
) -> None:
    scores, labels = _binary(seed, n)
    if rounded:
        scores = np.round(scores, 1)  # many ties
    auc, variance = auc_with_variance(scores, labels)
    assert auc == pytest.approx(roc_auc_score(labels, scores), rel=1e-9)
    expected_auc, expected_variance = _brute_force_delong(scores, labels)
    assert auc == pytest.approx(expected_auc, rel=1e-9)
    assert variance == pytest.approx(expected_variance, rel=1e-9)


def test_delong_variance_agrees_with_a_seeded_bootstrap() -> None:
    scores, labels = _binary(9, 400)
    _, variance = auc_with_variance(scores, labels)
    rng = np.random.default_rng(10)
    positives, negatives = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    bootstrap = []
    for _ in range(500):
        sample = np.concatenate(
            [rng.choice(positives, positives.size), rng.choice(negatives, negatives.size)]
        )
        bootstrap.append(auc_with_variance(scores[sample], labels[sample])[0])
    assert variance == pytest.approx(np.var(bootstrap, ddof=1), rel=0.2)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        ([0.1, 0.2, 0.3], [1.0, 1.0, 0.0], "at least 2 positives and 2 negatives"),
        ([0.1, 0.2], [1.0, 1.0], "at least 2 positives and 2 negatives"),
        ([0.1, 0.2, 0.3, 0.4], [0.0, 1.0, 2.0, 1.0], "0/1 labels"),
        ([0.1, 0.2, 0.3], [0.0, 1.0], "3 scores but 2 labels"),
    ],
)
def test_auc_without_both_classes_raises(
    scores: list[float], labels: list[float], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        auc_with_variance(scores, labels)


def test_perfect_separation_has_auc_one_and_zero_variance() -> None:
    assert auc_with_variance([0.1, 0.2, 0.8, 0.9], [0.0, 0.0, 1.0, 1.0]) == (1.0, 0.0)


def test_compare_auc_is_a_z_test_on_the_summed_variances() -> None:
    treatment, control = _binary(11, 1500, signal=1.3), _binary(12, 1500, signal=1.0)
    result = compare_auc(*treatment, *control)
    (auc_t, var_t), (auc_c, var_c) = auc_with_variance(*treatment), auc_with_variance(*control)
    assert result.test == "delong_z"
    assert result.difference == pytest.approx(auc_t - auc_c)
    assert result.variance == pytest.approx(var_t + var_c)
    assert result.statistic == pytest.approx((auc_t - auc_c) / np.sqrt(var_t + var_c))
    assert result.difference > 0
    assert result.p_value < 0.05
