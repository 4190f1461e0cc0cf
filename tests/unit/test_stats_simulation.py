"""Seeded canary simulations: the always-valid gate's error rates and its power at the plan.

Each experiment is looked at after each of 20 equal steps on cumulative data, as a canary does.
Per-step data are drawn through their sufficient statistics, which have exactly the raw data's
distribution: 0/1 outcomes as Binomial(k, p) successes; normal outcomes as a N(k mu, k sd^2) sum
and a within-step sum of squares sd^2 Chi2(k - 1). The sequential plan (power.py) sizes each
scenario: its sample size split over the 20 steps, tau2 = mde^2.
"""

import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import stats

from gateway.core.stats.compare import Comparison, compare_means
from gateway.core.stats.decision import Decision, GateAction, decide, quality_gate
from gateway.core.stats.power import sequential_samples_per_variant
from gateway.core.stats.sequential import SequentialState, default_tau2

ALPHA = 0.05
STEPS = 20
EXPERIMENTS = 1000
Z = float(stats.norm.ppf(1 - ALPHA / 2))


@dataclass(frozen=True)
class Scenario:
    """An outcome kind, its planned effect and its spread."""

    kind: str
    mde: float
    baseline: float
    sd: float

    def plan(self) -> int:
        """Records per variant the sequential test needs at the planned effect."""
        if self.kind == "binary":
            return sequential_samples_per_variant(self.mde, baseline_rate=self.baseline)
        return sequential_samples_per_variant(self.mde, variance=self.sd**2)


BINARY = Scenario("binary", mde=0.02, baseline=0.2, sd=0.4)
NORMAL = Scenario("normal", mde=0.1, baseline=0.0, sd=1.0)


def _cumulative(
    sums: np.ndarray, squares: np.ndarray, k: int, binary: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Means and variances of the mean after each step, as compare_means computes them."""
    n = k * np.arange(1, sums.shape[-1] + 1)
    means = np.cumsum(sums, axis=-1) / n
    if binary:
        return means, means * (1 - means) / n
    sample_variance = (np.cumsum(squares, axis=-1) - n * means**2) / (n - 1)
    return means, sample_variance / n


def _draw(
    rng: np.random.Generator, scenario: Scenario, mean: float, k: int
) -> tuple[np.ndarray, np.ndarray]:
    shape = (EXPERIMENTS, STEPS)
    if scenario.kind == "binary":
        sums = rng.binomial(k, mean, shape).astype(float)
        return _cumulative(sums, sums, k, binary=True)
    sums = rng.normal(k * mean, math.sqrt(k) * scenario.sd, shape)
    squares = scenario.sd**2 * rng.chisquare(k - 1, shape) + sums**2 / k
    return _cumulative(sums, squares, k, binary=False)


def _estimates(seed: int, scenario: Scenario, effect: float) -> tuple[np.ndarray, np.ndarray]:
    """Challenger minus champion, and its variance, at each look of each experiment."""
    rng = np.random.default_rng(seed)
    k = math.ceil(scenario.plan() / STEPS)
    challenger_mean, challenger_var = _draw(rng, scenario, scenario.baseline + effect, k)
    champion_mean, champion_var = _draw(rng, scenario, scenario.baseline, k)
    return challenger_mean - champion_mean, challenger_var + champion_var


@dataclass(frozen=True)
class Rates:
    """Shares of experiments: the canary's first final action, the report's verdicts, naive looks."""

    rollback: float
    advance: float
    decided: float
    naive_worse: float
    naive_better: float


def _canary(
    differences: np.ndarray, variances: np.ndarray, tau2: float, *, report: bool = False
) -> Rates:
    """Run each experiment's canary until it rolls back or advances (superiority gate).

    With report=True every look also asks `decide`, as someone re-running the report would;
    `decided` is the share of experiments where any look promoted or kept the champion.
    """
    counts = {GateAction.ROLLBACK: 0, GateAction.ADVANCE: 0, "decided": 0}
    for difference_row, variance_row in zip(differences, variances, strict=True):
        state = SequentialState(tau2, ALPHA)
        final: GateAction | None = None
        decided = False
        for difference, variance in zip(difference_row, variance_row, strict=True):
            state = state.update(float(difference), float(variance))
            if final is None:
                action = quality_gate(
                    interval=state.interval, margin=0.0, require_superior=True, srm_healthy=True
                ).action
                final = None if action is GateAction.HOLD else action
            if report:
                half = Z * math.sqrt(variance)
                comparison = Comparison(
                    float(difference),
                    (float(difference) - half, float(difference) + half),
                    state.p_value,
                    float(difference) / math.sqrt(variance),
                    "welch_t",
                    None,
                    float(variance),
                )
                verdict = decide(
                    srm_healthy=True,
                    comparison=comparison,
                    sequential_interval=state.interval,
                    higher_is_better=True,
                )
                decided = decided or verdict.decision is not Decision.INCONCLUSIVE
            elif final is not None:
                break
        if final is not None:
            counts[final] += 1
        counts["decided"] += decided
    total = len(differences)
    se = np.sqrt(variances)
    return Rates(
        counts[GateAction.ROLLBACK] / total,
        counts[GateAction.ADVANCE] / total,
        counts["decided"] / total,
        float(np.mean(np.any(differences + Z * se < 0, axis=1))),
        float(np.mean(np.any(differences - Z * se > 0, axis=1))),
    )


@pytest.mark.parametrize("binary", [True, False])
def test_cumulative_estimates_equal_compare_means_on_raw_data(binary: bool) -> None:
    rng = np.random.default_rng(3)
    k = 40
    raw = [
        (rng.random(k * 5) < 0.3).astype(float) if binary else rng.normal(1, 2, k * 5)
        for _ in range(2)
    ]
    cumulative = [
        _cumulative(x.reshape(5, k).sum(axis=1), (x**2).reshape(5, k).sum(axis=1), k, binary)
        for x in raw
    ]
    for step in range(5):
        result = compare_means(raw[0][: k * (step + 1)], raw[1][: k * (step + 1)])
        assert result.test == ("two_proportion_z" if binary else "welch_t")
        difference = cumulative[0][0][step] - cumulative[1][0][step]
        variance = cumulative[0][1][step] + cumulative[1][1][step]
        assert (difference, variance) == pytest.approx((result.difference, result.variance))


@pytest.mark.parametrize(("scenario", "seed"), [(BINARY, 101), (NORMAL, 102)])
def test_aa_canary_rarely_rolls_back_or_promotes_while_naive_looks_often_do(
    scenario: Scenario, seed: int
) -> None:
    differences, variances = _estimates(seed, scenario, effect=0.0)
    rates = _canary(differences, variances, default_tau2(scenario.mde), report=True)
    assert rates.rollback <= ALPHA
    assert rates.advance <= ALPHA
    assert rates.decided <= ALPHA
    # A fixed-horizon interval looked at after every step errs far more than alpha.
    assert rates.naive_worse > ALPHA
    assert rates.naive_better > ALPHA


@pytest.mark.parametrize(
    ("scenario", "direction", "seed"),
    [(BINARY, 1, 201), (BINARY, -1, 202), (NORMAL, 1, 203), (NORMAL, -1, 204)],
)
def test_planned_effect_is_detected_in_at_least_80_percent_of_canaries(
    scenario: Scenario, direction: int, seed: int
) -> None:
    differences, variances = _estimates(seed, scenario, effect=direction * scenario.mde)
    rates = _canary(differences, variances, default_tau2(scenario.mde))
    detected = rates.advance if direction > 0 else rates.rollback
    wrong = rates.rollback if direction > 0 else rates.advance
    assert detected >= 0.8
    assert wrong <= ALPHA
