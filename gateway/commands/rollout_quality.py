"""The canary's quality gate: the challenger's outcomes against the champion's, at every look.

At each interval of `gateway rollout run --outcomes FILE`, the inference logs since the canary
started are joined to the outcome files (re-read every time, so outcomes that arrive during the
canary count), exactly as `gateway report` joins them. The cumulative difference (challenger minus
champion) and its variance feed one mSPRT state for the whole canary, so the always-valid
interval may be looked at after every interval without inflating false alarms; the mixture
variance (tau2) is fixed at the first look. `quality_gate` then says roll back, hold or advance.
"""

import dataclasses
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any

from gateway.core.judging import Metric, higher_is_better
from gateway.core.rollout import Action, Verdict
from gateway.core.stats.decision import GateAction, GateDecision, oriented, quality_gate
from gateway.core.stats.sequential import SequentialState
from gateway.observe.report.assemble import Report, ReportOptions, build_report
from gateway.observe.report.data import ReportInputError


class QualityGate:
    """Judges the challenger's outcomes against the champion's with always-valid confidence."""

    def __init__(
        self,
        options: ReportOptions,
        *,
        margin: float,
        require_superior: bool,
        report: Callable[[ReportOptions], Report] = build_report,
    ) -> None:
        if margin < 0:
            raise ValueError(f"--margin must be >= 0, got {margin}")
        self._options = options
        self._margin = margin
        self._require_superior = require_superior
        self._report = report
        self._state: SequentialState | None = None

    def look(self, since: datetime) -> tuple[GateDecision, dict[str, Any]]:
        """The gate's decision on everything logged since the canary started, with its figures."""
        try:
            report = self._report(dataclasses.replace(self._options, since=since))
        except ReportInputError as exc:
            return GateDecision(GateAction.HOLD, f"Outcomes cannot be judged yet: {exc}"), {}
        comparisons = report.get("comparisons") or []
        healthy = bool(report["srm"]["healthy"])
        figures: dict[str, Any] = {"srm_p_value": report["srm"].get("p_value")}
        if not comparisons:
            reason = "No outcomes joined to both variants yet."
            return GateDecision(GateAction.HOLD, reason), figures
        comparison = comparisons[0]
        variance = float(comparison["variance"])
        if not math.isfinite(variance) or variance <= 0:
            reason = "The outcome comparison has no spread yet."
            return GateDecision(GateAction.HOLD, reason), figures
        if self._state is None:
            self._state = SequentialState(float(comparison["tau2"]), self._options.alpha)
        self._state = self._state.update(float(comparison["difference"]), variance)
        better = higher_is_better(Metric(self._options.metric))
        interval = oriented(self._state.interval, better)
        decision = quality_gate(
            interval=interval,
            margin=self._margin,
            require_superior=self._require_superior,
            srm_healthy=healthy,
        )
        variants = report.get("variants", {})
        figures |= {
            "metric": self._options.metric.value,
            "difference": comparison["difference"],
            "always_valid_interval": list(self._state.interval),
            "always_valid_p_value": self._state.p_value,
            "looks": self._state.looks,
            "outcomes": {name: (variants.get(name) or {}).get("outcome") for name in variants},
        }
        return decision, figures


def with_quality(verdict: Verdict, quality: GateDecision) -> Verdict:
    """The canary's action when the outcome comparison is judged too.

    The operational guard's rollback stands; a quality rollback rolls back; the canary advances
    only when both say so, and holds otherwise.
    """
    if verdict.action is Action.ROLLBACK:
        return verdict
    if quality.action is GateAction.ROLLBACK:
        return Verdict(Action.ROLLBACK, (quality.reason,))
    reasons = (*verdict.reasons, quality.reason)
    if verdict.action is Action.ADVANCE and quality.action is GateAction.ADVANCE:
        return Verdict(Action.ADVANCE, reasons)
    return Verdict(Action.HOLD, reasons)
