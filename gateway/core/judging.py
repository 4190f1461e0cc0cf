"""What an outcome comparison is judged on: the join keys and the quality metrics (pure, light).

Kept apart from the statistics so that the command line can offer these choices without
importing numpy or scipy.
"""

from enum import StrEnum
from typing import Final, Literal, get_args

# How outcome rows are joined to inference-log records: by the gateway's request id, the
# caller's own id, or the user (raw ids hashed as the gateway hashes user keys).
Key = Literal["request_id", "client_request_id", "user"]
KEYS: Final[tuple[str, ...]] = get_args(Key)


class Metric(StrEnum):
    """A model-quality metric; MEAN is the outcome's (label's) own mean."""

    ACCURACY = "accuracy"
    ERROR_RATE = "error_rate"
    LOG_LOSS = "log_loss"
    BRIER = "brier"
    MSE = "mse"
    MAE = "mae"
    AUC = "auc"
    MEAN = "mean"


METRICS: Final[tuple[str, ...]] = tuple(metric.value for metric in Metric)
_HIGHER_IS_BETTER = {Metric.ACCURACY, Metric.AUC, Metric.MEAN}


def higher_is_better(metric: Metric) -> bool:
    """Whether a larger value of the metric is better (the outcome's mean: larger is better)."""
    return Metric(metric) in _HIGHER_IS_BETTER
