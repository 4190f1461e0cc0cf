"""Verdicts: whether the challenger wins a report, and what a quality-gated canary does next.

Both read an always-valid interval (gateway.core.stats.sequential) for challenger minus
champion, so they may be asked after every look without inflating the error rate. `decide`
orients the interval itself from `higher_is_better`; `quality_gate` takes it already oriented so
that positive means the challenger is better.
"""

import math
from dataclasses import dataclass
from enum import StrEnum

from gateway.core.stats.compare import Comparison

_TEST_NAMES = {
    "two_proportion_z": "two-proportion z-test",
    "welch_t": "Welch's t-test",
    "delta_method_z": "delta-method z-test",
    "delong_z": "DeLong z-test",
}


class Decision(StrEnum):
    """What a report concludes about a challenger."""

    PROMOTE = "promote"
    KEEP_CHAMPION = "keep_champion"
    INCONCLUSIVE = "inconclusive"
    SPLIT_UNHEALTHY = "split_unhealthy"


@dataclass(frozen=True)
class Verdict:
    """A report's decision and the sentence that explains it."""

    decision: Decision
    reason: str


class GateAction(StrEnum):
    """What a quality-gated canary does after a look."""

    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class GateDecision:
    """A canary step's action and the sentence that explains it."""

    action: GateAction
    reason: str


def _figure(value: float) -> str:
    return f"{value:+.4g}" if math.isfinite(value) else ("+inf" if value > 0 else "-inf")


def _interval(interval: tuple[float, float]) -> str:
    return f"[{_figure(interval[0])}, {_figure(interval[1])}]"


def oriented(interval: tuple[float, float], higher_is_better: bool) -> tuple[float, float]:
    """The interval of challenger minus champion turned so that positive means better."""
    low, high = interval
    return (low, high) if higher_is_better else (-high, -low)


def decide(
    *,
    srm_healthy: bool,
    comparison: Comparison | None,
    sequential_interval: tuple[float, float] | None,
    higher_is_better: bool,
    margin: float = 0.0,
    min_samples_reached: bool = True,
) -> Verdict:
    """Promote, keep the champion, or wait, from challenger-minus-champion figures.

    An unhealthy split decides nothing. The always-valid interval, turned so positive means
    better, promotes when entirely above 0 and keeps the champion when entirely below -margin.
    Without an always-valid interval the comparison's fixed-horizon interval is used, which is
    valid for one look only. Before the planned sample size nothing is decided.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    if not srm_healthy:
        return Verdict(
            Decision.SPLIT_UNHEALTHY,
            "The traffic split does not match its weights (sample ratio mismatch), "
            "so the variants' outcomes cannot be compared.",
        )
    if comparison is None:
        return Verdict(Decision.INCONCLUSIVE, "No outcomes joined, so there is nothing to compare.")
    kind = "always-valid" if sequential_interval is not None else "fixed-horizon"
    raw = sequential_interval if sequential_interval is not None else comparison.ci
    low, high = oriented(raw, higher_is_better)
    shown = f"the {kind} interval for the improvement {_interval((low, high))}"
    facts = (
        f"(challenger minus champion {_figure(comparison.difference)}; "
        f"{_TEST_NAMES[comparison.test]} p = {comparison.p_value:.3g})"
    )
    if not min_samples_reached:
        return Verdict(
            Decision.INCONCLUSIVE,
            f"The planned sample size is not reached yet; {shown} {facts}.",
        )
    if low > 0:
        return Verdict(
            Decision.PROMOTE,
            f"The challenger is better: {shown} lies entirely above 0 {facts}.",
        )
    if high < -margin:
        bound = f"-{margin:.4g}" if margin else "0"
        return Verdict(
            Decision.KEEP_CHAMPION,
            f"The challenger is worse: {shown} lies entirely below {bound} {facts}.",
        )
    return Verdict(
        Decision.INCONCLUSIVE,
        f"No clear winner yet: {shown} contains 0 {facts}.",
    )


def quality_gate(
    *,
    interval: tuple[float, float],
    margin: float,
    require_superior: bool,
    srm_healthy: bool,
) -> GateDecision:
    """Roll back, advance or hold a canary from an always-valid interval (positive = better).

    Rollback when the upper bound is below -margin: worse by more than the margin. Advance when
    the lower bound is above -margin (non-inferior), or above 0 with require_superior, and only
    on a healthy split; an unhealthy split holds. Otherwise hold.
    """
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    low, high = interval
    shown = f"the always-valid interval for the improvement {_interval(interval)}"
    if high < -margin:
        return GateDecision(
            GateAction.ROLLBACK,
            f"The challenger is worse by more than the margin {margin:.4g}: {shown}.",
        )
    bar = 0.0 if require_superior else -margin
    if low > bar:
        if not srm_healthy:
            return GateDecision(
                GateAction.HOLD,
                f"The challenger looks good ({shown}) but the traffic split does not match "
                "its weights (sample ratio mismatch), so the canary holds.",
            )
        wanted = "better than the champion" if require_superior else "no worse than the margin"
        return GateDecision(GateAction.ADVANCE, f"The challenger is {wanted}: {shown}.")
    return GateDecision(
        GateAction.HOLD,
        f"Not enough evidence yet: {shown} reaches below {_figure(bar)}.",
    )
