"""Canary rollouts (pure): the weights tag's format, the canary plan, and the guard's verdict.

Live weights are a registered-model tag, `gateway.weights`, holding a JSON object of variant name
to integer weight, e.g. `{"champion": 75, "challenger": 25}`. Every gateway process serving the
model reads it on each refresh; a variant the tag does not name keeps its configured weight.
Each rollout decision is recorded as a tag `gateway.rollout.<UTC time>` holding a JSON object.
"""

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

WEIGHTS_TAG = "gateway.weights"
AUDIT_TAG_PREFIX = "gateway.rollout."
DEFAULT_STEPS = (5, 25, 50, 100)


def parse_weights(text: str, names: Iterable[str]) -> dict[str, int]:
    """Weights from the tag's JSON for the given variant names; ValueError if it is unusable."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{WEIGHTS_TAG} is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ValueError(f"{WEIGHTS_TAG} must be a JSON object of variant to weight")
    known = list(names)
    weights = {}
    for name, weight in document.items():
        if name not in known:
            continue
        if not isinstance(weight, int) or isinstance(weight, bool) or weight < 0:
            raise ValueError(
                f"{WEIGHTS_TAG}: weight of {name!r} must be an integer >= 0, got {weight!r}"
            )
        weights[name] = weight
    return weights


def merge_weights(configured: Mapping[str, int], live: Mapping[str, int]) -> dict[str, int]:
    """The configured weights overlaid with the live ones; ValueError if all would be zero."""
    merged = {name: live.get(name, weight) for name, weight in configured.items()}
    if not any(merged.values()):
        raise ValueError(f"{WEIGHTS_TAG} would give every variant weight 0")
    return merged


def format_weights(weights: Mapping[str, int]) -> str:
    """The tag's JSON for these weights."""
    return json.dumps(dict(sorted(weights.items())), separators=(",", ":"))


def parse_assignments(text: str) -> dict[str, int]:
    """`champion=75,challenger=25` as weights; ValueError with the offending part otherwise."""
    weights = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        name, sep, value = part.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit():
            raise ValueError(f"expected NAME=WEIGHT with a whole number >= 0, got {part!r}")
        weights[name.strip()] = int(value)
    if not weights:
        raise ValueError("give at least one NAME=WEIGHT")
    return weights


def canary_weights(champion: str, challenger: str, percent: int) -> dict[str, int]:
    """The weights of one canary step: `percent` of traffic on the challenger."""
    if not 0 <= percent <= 100:
        raise ValueError(f"a step must be a percentage from 0 to 100, got {percent}")
    return {champion: 100 - percent, challenger: percent}


def parse_steps(text: str) -> tuple[int, ...]:
    """`5,25,50,100` as rising percentages."""
    try:
        steps = tuple(int(piece) for piece in text.split(","))
    except ValueError as exc:
        raise ValueError(
            f"steps must be whole percentages separated by commas, got {text!r}"
        ) from exc
    if not steps or any(not 0 < step <= 100 for step in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"steps must rise strictly within 1..100, got {text!r}")
    return steps


@dataclass(frozen=True)
class Figures:
    """What one variant did over a judging interval."""

    requests: float
    errors: float
    p99_seconds: float | None

    @property
    def error_rate(self) -> float:
        """Errors per request, 0 without requests."""
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Guard:
    """When a challenger is judged bad."""

    min_requests: int = 50
    # The challenger's error rate may exceed the champion's by at most this much (absolute).
    max_error_rate_increase: float = 0.01
    # The challenger's p99 latency may be at most this multiple of the champion's.
    max_p99_ratio: float = 1.5


class Action(StrEnum):
    """What a canary does after an interval."""

    ADVANCE = "advance"
    HOLD = "hold"
    ROLLBACK = "rollback"


@dataclass(frozen=True)
class Verdict:
    """An action and the figures that decided it, in words."""

    action: Action
    reasons: tuple[str, ...]


def judge(champion: Figures, challenger: Figures, guard: Guard) -> Verdict:
    """Compare a challenger with the champion over one interval."""
    failures = []
    if challenger.error_rate > champion.error_rate + guard.max_error_rate_increase:
        failures.append(
            f"error rate {challenger.error_rate:.2%} vs champion {champion.error_rate:.2%} "
            f"(allowed +{guard.max_error_rate_increase:.2%})"
        )
    ratio = _ratio(challenger.p99_seconds, champion.p99_seconds)
    if ratio is not None and ratio > guard.max_p99_ratio:
        failures.append(
            f"p99 latency {ratio:.2f}x the champion's (allowed {guard.max_p99_ratio:g}x)"
        )
    if failures:
        # Errors condemn a challenger even before the minimum count: a broken model is broken.
        enough = (
            challenger.requests >= guard.min_requests or challenger.errors >= guard.min_requests / 5
        )
        if enough:
            return Verdict(Action.ROLLBACK, tuple(failures))
    if challenger.requests < guard.min_requests:
        return Verdict(
            Action.HOLD,
            (
                f"{challenger.requests:.0f} challenger requests, {guard.min_requests} needed to judge",
            ),
        )
    return Verdict(
        Action.ADVANCE,
        (
            f"error rate {challenger.error_rate:.2%} vs champion {champion.error_rate:.2%}; "
            f"p99 ratio {'n/a' if ratio is None else f'{ratio:.2f}x'}",
        ),
    )


def _ratio(value: float | None, reference: float | None) -> float | None:
    if value is None or reference is None or reference <= 0:
        return None
    return value / reference


def quantile(buckets: Sequence[tuple[float, float]], q: float) -> float | None:
    """The q-quantile of a Prometheus histogram from its cumulative (upper bound, count) buckets.

    Linear interpolation inside the bucket, as PromQL's histogram_quantile does.
    """
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, cumulative in ordered:
        if cumulative >= rank:
            if math.isinf(bound):
                return lower_bound
            span = cumulative - lower_count
            fraction = (rank - lower_count) / span if span else 1.0
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, cumulative
    return ordered[-1][0]
