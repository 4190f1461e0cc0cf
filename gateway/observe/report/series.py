"""The report's views of what the variants answered: SQL aggregates over the `records` table.

Prediction distributions come from the responses' prediction lists, unnested by DuckDB's JSON
functions: mean and quantiles of numbers, shares of classes (strings, integers, booleans) when a
variant has at most 20.

Series are cut by `date_trunc` into seconds, minutes, hours or days: `hourly` for the JSON's
hourly series, and for the charts whichever unit cuts the window into at least six buckets.
Shadow records are compared with the live record of the same request id, prediction by
prediction, as JSON values.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Final

import duckdb

from gateway.observe.report.data import LIVE_SQL, scalar

# date_trunc units for time series, shortest first, with their length in seconds.
QUANTILES: Final = (0.05, 0.25, 0.5, 0.75, 0.95)
_MAX_CLASSES: Final = 20
BUCKETS: Final = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}


@dataclass(frozen=True)
class PredictionStats:
    """A variant's live predictions: count, mean and quantiles of numbers, shares of classes."""

    count: int
    numeric: int
    mean: float | None
    quantiles: dict[str, float]
    classes: dict[str, float]


@dataclass(frozen=True)
class HourRow:
    """One variant's live traffic in one hour."""

    hour: datetime
    variant: str
    requests: int
    errors: int
    mean_ms: float | None
    p95_ms: float | None


@dataclass(frozen=True)
class ShadowAgreement:
    """Shadow records of one variant and version, compared with the live answer of their request."""

    variant: str
    model_version: str | None
    records: int
    rows_compared: int
    rows_differing: int


def predictions(con: duckdb.DuckDBPyConnection) -> dict[str, PredictionStats]:
    """Each live variant's prediction distribution, from the responses' prediction lists."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE prediction_values AS
        SELECT variant, value, try_cast(value AS DOUBLE) AS number,
               CASE WHEN json_type(value) = 'VARCHAR' THEN json_extract_string(value, '$')
                    WHEN json_type(value) IN ('BIGINT', 'UBIGINT', 'BOOLEAN') THEN value::VARCHAR
               END AS label
        FROM (SELECT variant, unnest(json_extract(predictions, '$[*]')) AS value
              FROM records WHERE {LIVE_SQL} AND predictions IS NOT NULL)"""
    )
    stats = con.execute(
        f"""SELECT variant, count(*), count(number), avg(number),
               quantile_cont(number, {list(QUANTILES)}), count(DISTINCT label)
        FROM prediction_values GROUP BY variant"""
    ).fetchall()
    classes: dict[str, dict[str, float]] = {}
    for variant, label, share in con.execute(
        """SELECT variant, label, count(*) / sum(count(*)) OVER (PARTITION BY variant)
        FROM prediction_values WHERE label IS NOT NULL GROUP BY variant, label
        ORDER BY variant, count(*) DESC, label"""
    ).fetchall():
        classes.setdefault(variant, {})[label] = float(share)
    result = {}
    for variant, count, numeric, mean, quantiles, labels in stats:
        shown = classes.get(variant, {}) if 0 < labels <= _MAX_CLASSES else {}
        result[variant] = PredictionStats(
            int(count),
            int(numeric),
            mean,
            {f"p{round(q * 100)}": v for q, v in zip(QUANTILES, quantiles or [], strict=False)},
            shown,
        )
    return result


def hourly(con: duckdb.DuckDBPyConnection, unit: str = "hour") -> list[HourRow]:
    """Live requests, errors, mean and p95 latency per variant per hour (or `unit` of time)."""
    if unit not in BUCKETS:
        raise ValueError(f"unit: one of {', '.join(BUCKETS)}, got {unit!r}")
    return [
        HourRow(hour, variant, int(requests), int(errors), mean, p95)
        for hour, variant, requests, errors, mean, p95 in con.execute(
            f"""SELECT date_trunc('{unit}', ts) AS hour, variant, count(*),
                   count(*) FILTER (WHERE status_code <> 200), avg(duration_ms),
                   quantile_cont(duration_ms, 0.95)
            FROM records WHERE {LIVE_SQL} AND variant IS NOT NULL
            GROUP BY ALL ORDER BY hour, variant"""
        ).fetchall()
    ]


def series_unit(first: datetime | None, last: datetime | None, *, points: int = 6) -> str:
    """The longest unit of `BUCKETS` that cuts the window into at least `points` buckets."""
    span = (last - first).total_seconds() if first is not None and last is not None else 0.0
    fitting = [unit for unit, seconds in BUCKETS.items() if span / seconds >= points]
    return fitting[-1] if fitting else "second"


def shadow_agreement(con: duckdb.DuckDBPyConnection) -> list[ShadowAgreement]:
    """Per shadow variant and version: prediction rows compared with the live record, and differing."""
    if not scalar(con, "SELECT count(*) FROM records WHERE routing = 'shadow'"):
        return []
    return [
        ShadowAgreement(variant, version, int(records), int(compared or 0), int(differing or 0))
        for variant, version, records, compared, differing in con.execute(
            f"""WITH shadow AS (
                SELECT request_id, variant, model_version,
                       json_extract(predictions, '$[*]')::VARCHAR[] AS mine
                FROM records WHERE routing = 'shadow' AND status_code = 200),
            live AS (
                SELECT request_id, json_extract(predictions, '$[*]')::VARCHAR[] AS theirs
                FROM records WHERE {LIVE_SQL} AND status_code = 200 AND predictions IS NOT NULL),
            pairs AS (
                SELECT s.variant, s.model_version, l.theirs IS NOT NULL AS matched,
                       list_zip(s.mine, l.theirs) AS zipped
                FROM shadow s LEFT JOIN live l USING (request_id))
            SELECT variant, model_version, count(*),
                   sum(len(zipped)) FILTER (WHERE matched),
                   sum(len(list_filter(zipped, lambda x: x[1] IS DISTINCT FROM x[2])))
                       FILTER (WHERE matched)
            FROM pairs GROUP BY ALL ORDER BY variant, model_version"""
        ).fetchall()
    ]
