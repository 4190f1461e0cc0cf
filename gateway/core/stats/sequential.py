"""Always-valid inference: the mixture sequential probability ratio test (mSPRT).

Johari, Pekelis, Walsh 2017, "Always Valid Inference: Continuous Monitoring of A/B Tests". For
an estimate d of an effect with variance V (approximately normal), and a normal mixture N(0, tau2)
over the effect, the likelihood ratio of "effect ~ N(0, tau2)" against "no effect" is

    Lambda = sqrt(V / (V + tau2)) * exp(tau2 * d^2 / (2 V (V + tau2))).

The always-valid p-value is the running minimum of min(1, 1/Lambda) over looks, and the
always-valid interval is the running intersection of {theta : Lambda(d - theta) < 1/alpha}. Both
may be checked after every look, as often as wanted, without inflating the error rate above alpha.

Default tau2: the square of the minimum detectable effect (tau = MDE). Any tau2 > 0 keeps the
error guarantee; tau2 near the squared size of the effects one expects detects them soonest.
"""

import math
from collections.abc import Sequence
from dataclasses import dataclass


def default_tau2(mde: float) -> float:
    """The mixture variance used when none is given: the minimum detectable effect squared."""
    if not math.isfinite(mde) or mde == 0:
        raise ValueError(f"the minimum detectable effect must be finite and non-zero, got {mde}")
    return mde * mde


def _check(variance: float, tau2: float) -> None:
    if not tau2 > 0 or not math.isfinite(tau2):
        raise ValueError(f"tau2 must be finite and > 0, got {tau2}")
    if not variance >= 0:
        raise ValueError(f"variance must be >= 0, got {variance}")


def log_likelihood_ratio(difference: float, variance: float, tau2: float) -> float:
    """log Lambda, the mixture likelihood ratio; -inf for variance 0 and difference 0."""
    _check(variance, tau2)
    if math.isinf(variance):
        return 0.0
    if variance == 0:
        return -math.inf if difference == 0 else math.inf
    total = variance + tau2
    return 0.5 * math.log(variance / total) + tau2 * difference**2 / (2 * variance * total)


def always_valid_p_value(difference: float, variance: float, tau2: float) -> float:
    """min(1, 1/Lambda) at one look (take the running minimum over looks)."""
    return math.exp(-max(0.0, log_likelihood_ratio(difference, variance, tau2)))


def always_valid_interval(
    difference: float, variance: float, tau2: float, alpha: float = 0.05
) -> tuple[float, float]:
    """The effects not rejected at one look (intersect over looks); (d, d) for variance 0."""
    _check(variance, tau2)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    if math.isinf(variance):
        return (-math.inf, math.inf)
    if variance == 0:
        return (difference, difference)
    total = variance + tau2
    half = math.sqrt(
        variance * total / tau2 * (2 * math.log(1 / alpha) + math.log(total / variance))
    )
    return (difference - half, difference + half)


@dataclass(frozen=True)
class SequentialState:
    """The always-valid p-value and interval after some looks; `update` adds one look."""

    tau2: float
    alpha: float = 0.05
    looks: int = 0
    p_value: float = 1.0
    interval: tuple[float, float] = (-math.inf, math.inf)

    def update(self, difference: float, variance: float) -> "SequentialState":
        """The state after one more look at the cumulative estimate and its variance."""
        p_value = always_valid_p_value(difference, variance, self.tau2)
        low, high = always_valid_interval(difference, variance, self.tau2, self.alpha)
        return SequentialState(
            self.tau2,
            self.alpha,
            self.looks + 1,
            min(self.p_value, p_value),
            (max(self.interval[0], low), min(self.interval[1], high)),
        )


def running_states(
    estimates: Sequence[tuple[float, float]], tau2: float, alpha: float = 0.05
) -> list[SequentialState]:
    """The state after each look at cumulative (difference, variance) estimates."""
    state = SequentialState(tau2, alpha)
    states = []
    for difference, variance in estimates:
        state = state.update(difference, variance)
        states.append(state)
    return states


def running_p_values(estimates: Sequence[tuple[float, float]], tau2: float) -> list[float]:
    """The always-valid p-value after each look (a running minimum)."""
    return [state.p_value for state in running_states(estimates, tau2)]


def running_intervals(
    estimates: Sequence[tuple[float, float]], tau2: float, alpha: float = 0.05
) -> list[tuple[float, float]]:
    """The always-valid interval after each look (a running intersection).

    The intersection is empty (low > high) only when the data contradict every fixed effect,
    which happens with probability at most alpha.
    """
    return [state.interval for state in running_states(estimates, tau2, alpha)]
