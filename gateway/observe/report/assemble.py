"""`gateway report`'s assembly: the logs' and outcomes' aggregates turned into one report document.

The report is a JSON-ready dict (see docs/report.md for its keys), made in this order: traffic per
variant, the sample-ratio check, predictions, hourly series, shadow agreement, then, with outcome
files, the comparison of challenger against champion (gateway.observe.report.compare), drift, and
the verdict of gateway.core.stats.decision. The text and HTML renderings read only this dict.
"""

import logging
import math
import tempfile
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

from gateway.core.judging import Key, Metric, higher_is_better
from gateway.core.stats.decision import Decision, Verdict, decide
from gateway.core.stats.srm import sample_ratio_mismatch, time_weighted_shares
from gateway.observe.report import data as report_data
from gateway.observe.report import drift as report_drift
from gateway.observe.report import outcomes as report_outcomes
from gateway.observe.report import series as report_series
from gateway.observe.report.compare import compare_variants
from gateway.observe.report.data import Assignment, ReportInputError, VariantTraffic

logger = logging.getLogger(__name__)

Report = dict[str, Any]


@dataclass(frozen=True)
class ReportOptions:
    """Everything a report is made from: where the logs and outcomes are, and how to compare."""

    logs: Path
    endpoint: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    outcomes: tuple[Path, ...] = ()
    key: Key = "request_id"
    outcome_column: str = "outcome"
    metric: Metric = Metric.MEAN
    user_key_secret: str | None = None
    covariate: str | None = None
    mde: float | None = None
    alpha: float = 0.05
    baseline: Path | None = None
    champion: str | None = None
    challenger: str | None = None
    sample_cap: int = report_drift.SAMPLE_CAP
    memory_limit: str = "2GB"


def build_report(options: ReportOptions) -> Report:
    """Read the logs (and outcomes), compute every figure, and return the report document."""
    with tempfile.TemporaryDirectory(prefix="gateway-report-") as spill:
        con = report_data.connect(options.memory_limit, Path(spill))
        try:
            return _build(con, options)
        finally:
            con.close()


def _build(con: duckdb.DuckDBPyConnection, options: ReportOptions) -> Report:
    info = report_data.load_records(
        con, options.logs, endpoint=options.endpoint, since=options.since, until=options.until
    )
    traffic = report_data.traffic(con)
    live = [row for row in traffic if row.kind == "live"]
    assignment = report_data.assignment(con)
    champion, challenger = choose_pair(options, live, assignment)
    live.sort(key=lambda row: (row.variant != champion, row.variant != challenger))
    srm, srm_note = _srm(assignment)
    predictions = report_series.predictions(con)
    notes = [] if srm_note is None else [srm_note]
    comparison_part: Report = {"outcome": None, "comparisons": [], "verdict_inputs": None}
    if options.outcomes:
        report_outcomes.load_outcomes(
            con,
            options.outcomes,
            key=options.key,
            column=options.outcome_column,
            covariate=options.covariate,
            secret=options.user_key_secret,
        )
        joined = report_outcomes.join_outcomes(con, options.key)
        comparison_part = compare_variants(
            joined,
            champion=champion,
            challenger=challenger,
            metric=Metric(options.metric),
            alpha=options.alpha,
            mde=options.mde,
            covariate=options.covariate is not None,
        )
        notes.extend(comparison_part["notes"])
    verdict = _verdict(srm["healthy"], comparison_part, options, champion, challenger)
    unit = report_series.series_unit(info.first, info.last)  # the charts' buckets
    outcome_by_variant = comparison_part.get("summaries", {})
    variants = {
        row.variant: {
            **_traffic_dict(row),
            "outcome": outcome_by_variant.get(row.variant),
            "predictions": asdict(predictions[row.variant]) if row.variant in predictions else None,
        }
        for row in live
    }
    document: Report = clean(
        {
            "endpoint": info.endpoint,
            "model": info.model,
            "window": {"first": _iso(info.first), "last": _iso(info.last)},
            "files": info.files,
            "records": info.records,
            "malformed_lines": info.malformed,
            "champion": champion,
            "challenger": challenger,
            "srm": srm,
            "variants": variants,
            "other_traffic": [_traffic_dict(row) for row in traffic if row.kind != "live"],
            "outcomes": comparison_part["outcome"],
            "comparisons": comparison_part["comparisons"],
            "drift": _drift(con, options, champion, challenger),
            "shadow": [asdict(row) for row in report_series.shadow_agreement(con)],
            "hourly": _hourly(con, bool(options.outcomes), "hour"),
            "series": {"unit": unit, "rows": _hourly(con, bool(options.outcomes), unit)},
            "verdict": {"decision": verdict.decision.value, "reason": verdict.reason},
            "notes": notes,
        }
    )
    return document


def choose_pair(
    options: ReportOptions, live: list[VariantTraffic], assignment: Assignment
) -> tuple[str | None, str | None]:
    """Champion and challenger: as named, else the variants so called, else the two heaviest."""
    names = [row.variant for row in live]
    for option, name in (("--champion", options.champion), ("--challenger", options.challenger)):
        if name is not None and name not in names:
            raise ReportInputError(
                f"{option}: no live records of variant {name!r} (variants: {', '.join(names)})"
            )
    weights: dict[str, float] = {}
    for count, split in assignment.splits:
        for name, weight in split.items():
            weights[name] = weights.get(name, 0.0) + count * weight
    ranked = sorted(names, key=lambda name: (-weights.get(name, 0.0), names.index(name)))
    champion = options.champion or ("champion" if "champion" in names else None)
    challenger = options.challenger or ("challenger" if "challenger" in names else None)
    rest = [name for name in ranked if name not in (champion, challenger)]
    if champion is None and rest:
        champion = rest.pop(0)
    if challenger is None and rest:
        challenger = rest.pop(0)
    if champion == challenger:
        raise ReportInputError("--champion and --challenger name the same variant")
    return champion, challenger


def _srm(assignment: Assignment) -> tuple[Report, str | None]:
    note = None
    if assignment.splits:
        expected = time_weighted_shares(assignment.splits)
    else:
        expected = dict.fromkeys(assignment.observed, 1.0)
        note = "The records carry no split (schema version 1): equal shares were assumed."
    result = sample_ratio_mismatch(assignment.observed, expected)
    return (
        {
            "unit": assignment.unit,
            "statistic": result.statistic,
            "p_value": result.p_value,
            "df": result.df,
            "healthy": result.healthy,
            "observed": result.observed,
            "expected": result.expected,
            "expected_shares": expected,
        },
        note,
    )


def _verdict(
    srm_healthy: bool,
    part: Report,
    options: ReportOptions,
    champion: str | None,
    challenger: str | None,
) -> Verdict:
    if champion is None or challenger is None:
        return Verdict(Decision.INCONCLUSIVE, "Fewer than two live variants: nothing to compare.")
    inputs = part.get("verdict_inputs")
    return decide(
        srm_healthy=srm_healthy,
        comparison=None if inputs is None else inputs["comparison"],
        sequential_interval=None if inputs is None else inputs["sequential_interval"],
        higher_is_better=higher_is_better(Metric(options.metric)),
        min_samples_reached=True if inputs is None else inputs["min_samples_reached"],
    )


def _drift(
    con: duckdb.DuckDBPyConnection,
    options: ReportOptions,
    champion: str | None,
    challenger: str | None,
) -> Report:
    sides = [name for name in (champion, challenger) if name is not None]
    report_drift.sample_features(con, sides, cap=options.sample_cap)
    rows = []
    if champion is not None and challenger is not None:
        rows = report_drift.feature_drift(con, champion, challenger)
    baseline_rows = []
    if options.baseline is not None:
        report_drift.sample_baseline(con, options.baseline, cap=options.sample_cap)
        for side in sides:
            baseline_rows.extend(
                report_drift.feature_drift(con, report_drift.baseline_side(), side)
            )
    prediction = None
    if champion is not None and challenger is not None:
        prediction = report_drift.prediction_drift(
            con, champion, challenger, cap=options.sample_cap
        )
    return {
        "sample_cap": options.sample_cap,
        "features": [_drift_dict(row) for row in rows],
        "baseline": [_drift_dict(row) for row in baseline_rows],
        "predictions": None if prediction is None else _drift_dict(prediction),
    }


def _drift_dict(row: report_drift.DriftRow) -> Report:
    figures = asdict(row.drift)
    figures.pop("name", None)
    return {"name": row.name, "reference": row.reference, "current": row.current, **figures}


def _hourly(con: duckdb.DuckDBPyConnection, with_outcomes: bool, unit: str) -> list[Report]:
    outcomes = {}
    if with_outcomes:
        outcomes = {
            (hour, variant): (n, mean)
            for hour, variant, n, mean in report_outcomes.hourly_outcomes(con, unit)
        }
    return [
        {
            "hour": _iso(row.hour),
            "variant": row.variant,
            "requests": row.requests,
            "errors": row.errors,
            "mean_ms": row.mean_ms,
            "p95_ms": row.p95_ms,
            "outcome_n": outcomes.get((row.hour, row.variant), (0, None))[0],
            "outcome_mean": outcomes.get((row.hour, row.variant), (0, None))[1],
        }
        for row in report_series.hourly(con, unit)
    ]


def _traffic_dict(row: VariantTraffic) -> Report:
    return {
        "variant": row.variant,
        "routing": row.kind,
        "model_versions": list(row.model_versions),
        "requests": row.requests,
        "users": row.users,
        "errors": row.errors,
        "error_rate": row.error_rate,
        "latency_ms": {"p50": row.p50_ms, "p95": row.p95_ms, "p99": row.p99_ms},
    }


def _iso(moment: object) -> str | None:
    if not isinstance(moment, datetime):
        return None
    return moment.isoformat(timespec="milliseconds") + ("" if moment.tzinfo else "Z")


def clean(value: Any) -> Any:
    """The document with tuples as lists and NaN or infinite floats as None (valid JSON)."""
    if isinstance(value, dict):
        return {str(key): clean(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [clean(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item") and not isinstance(value, str):
        return clean(value.item())
    return value
