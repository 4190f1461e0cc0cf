"""The report's outcome side in DuckDB: read outcome files and join them to the live records.

Outcome files are CSV, Parquet or JSON Lines (by extension), read by DuckDB and stacked by column
name. Each has a key column named after `--key` (`request_id`, `client_request_id`, or `user_id`
for `user`), the outcome column, and optionally `timestamp` and a covariate. Raw user ids are
hashed exactly as the gateway hashes user keys (`gateway.core.record.user_key_hash`, registered as
a DuckDB function), so they meet the records' `user_key_hash` without the log holding raw ids.

The join is an inner join: an outcome row counts only when it meets a live record of the window,
and a record without an outcome row is not an observation. With `--key user` a user belongs to the
variant of their first live record, and outcome rows stamped before that record are left out.
Only the joined rows come back to Python, as numpy arrays: one row per (record, outcome) with the
unit it belongs to, the record's first prediction, the outcome and the covariate.
"""

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import duckdb
import numpy as np
from numpy.typing import NDArray

from gateway.core.judging import Key
from gateway.core.record import user_key_hash
from gateway.observe.report.data import LIVE_SQL, ReportInputError
from gateway.observe.report.series import BUCKETS

logger = logging.getLogger(__name__)

KEY_COLUMNS: Final[dict[str, str]] = {
    "request_id": "request_id",
    "client_request_id": "client_request_id",
    "user": "user_id",
}
_READERS: Final = {
    # Every CSV column as text: ids keep their leading zeros, and values are cast below.
    ".csv": "read_csv({path}, header = true, all_varchar = true)",
    ".parquet": "read_parquet({path})",
    ".pq": "read_parquet({path})",
    ".jsonl": "read_json({path}, format = 'newline_delimited')",
    ".ndjson": "read_json({path}, format = 'newline_delimited')",
    ".json": "read_json({path}, format = 'auto')",
}


@dataclass(frozen=True)
class VariantRows:
    """One variant's joined rows: unit ids, first predictions, outcomes and covariates."""

    units: NDArray[np.uint64]
    predictions: NDArray[np.float64]
    outcomes: NDArray[np.float64]
    covariates: NDArray[np.float64]


@dataclass(frozen=True)
class Joined:
    """Joined outcome rows per live variant, and what the join says about units and coverage."""

    unit: Literal["request", "user"]
    rows: dict[str, VariantRows]
    outcome_rows: int
    unmatched: int  # outcome rows that met no live record (or, by user, none before them)


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _number(column: str) -> str:
    """SQL for a column as a number: numbers and numeric text as they are, true/false as 1/0."""
    return f"coalesce(try_cast({column} AS DOUBLE), try_cast({column} AS BOOLEAN)::DOUBLE)"


def load_outcomes(
    con: duckdb.DuckDBPyConnection,
    paths: Sequence[Path],
    *,
    key: Key,
    column: str,
    covariate: str | None,
    secret: str | None,
) -> int:
    """Read outcome files into the table `outcomes(key, outcome, covariate, ts)`; its row count."""
    key_column = KEY_COLUMNS[key]
    if key == "user" and not secret:
        raise ReportInputError(
            "--key user needs the log's user_key_secret: --user-key-secret or "
            "GATEWAY_INFERENCE_LOG__USER_KEY_SECRET"
        )
    selects = []
    for path in paths:
        reader = _READERS.get(path.suffix.lower())
        if reader is None:
            raise ReportInputError(f"--outcomes: {path}: not a .csv, .parquet or .jsonl file")
        if not path.is_file():
            raise ReportInputError(f"--outcomes: no such file: {path}")
        selects.append("SELECT * FROM " + reader.format(path=_quoted(str(path))))
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE outcomes_raw AS " + " UNION ALL BY NAME ".join(selects)
        )
    except duckdb.Error as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise ReportInputError(f"--outcomes: cannot read: {first_line}") from exc
    columns = [row[0] for row in con.execute("DESCRIBE outcomes_raw").fetchall()]
    for wanted, option in (
        (key_column, "--key"),
        (column, "--outcome-column"),
        (covariate, "--covariate"),
    ):
        if wanted is not None and wanted not in columns:
            raise ReportInputError(
                f"{option}: the outcomes have no column {wanted!r} (columns: {', '.join(columns)})"
            )
    if key == "user" and secret:
        secret_bytes = secret.encode()
        con.create_function(
            "gateway_user_key_hash",
            lambda raw: user_key_hash(raw, secret_bytes),
            ["VARCHAR"],
            "VARCHAR",
        )
        key_sql = f"gateway_user_key_hash({_identifier(key_column)}::VARCHAR)"
    else:
        key_sql = f"{_identifier(key_column)}::VARCHAR"
    outcome = _number(_identifier(column))
    covariate_sql = _number(_identifier(covariate)) if covariate else "NULL"
    ts_sql = 'try_cast("timestamp" AS TIMESTAMP)' if "timestamp" in columns else "NULL"
    bad = con.execute(
        f"""SELECT count(*) FROM outcomes_raw
        WHERE {_identifier(column)} IS NOT NULL AND {outcome} IS NULL"""
    ).fetchone()
    if bad and bad[0]:
        raise ReportInputError(f"--outcome-column: {column!r} holds {bad[0]} non-numeric value(s)")
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE outcomes AS
        SELECT {key_sql} AS key, {outcome} AS outcome,
               {covariate_sql} AS covariate, {ts_sql} AS ts
        FROM outcomes_raw WHERE {_identifier(key_column)} IS NOT NULL AND {outcome} IS NOT NULL"""
    )
    con.execute("DROP TABLE outcomes_raw")
    row = con.execute("SELECT count(*) FROM outcomes").fetchone()
    return int(row[0]) if row else 0


def join_outcomes(con: duckdb.DuckDBPyConnection, key: Key) -> Joined:
    """Join `outcomes` to the live records by `key` into the table `joined`; fetch it by variant."""
    if key == "user":
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE joined AS
            WITH exposure AS (
                SELECT user_key_hash AS uid, arg_min(variant, ts) AS variant, min(ts) AS ts
                FROM records WHERE {LIVE_SQL} AND user_key_hash IS NOT NULL
                  AND variant IS NOT NULL GROUP BY user_key_hash)
            SELECT e.variant, hash(e.uid) AS unit, true AS has_user, NULL::DOUBLE AS prediction,
                   e.ts,
                   o.outcome, o.covariate, o.rowid AS oid
            FROM outcomes o JOIN exposure e ON e.uid = o.key
            WHERE o.ts IS NULL OR o.ts >= e.ts"""
        )
    else:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE joined AS
            SELECT r.variant, hash(coalesce(r.user_key_hash, r.request_id)) AS unit,
                   r.user_key_hash IS NOT NULL AS has_user, r.prediction, r.ts,
                   o.outcome, o.covariate, o.rowid AS oid
            FROM outcomes o JOIN records r ON r.{key} = o.key
            WHERE r.{LIVE_SQL} AND r.variant IS NOT NULL"""
        )
    counts = con.execute(
        """SELECT (SELECT count(*) FROM outcomes),
                  (SELECT count(DISTINCT oid) FROM joined),
                  (SELECT count(*) FROM (SELECT unit FROM joined WHERE has_user
                                         GROUP BY unit HAVING count(*) > 1))"""
    ).fetchone() or (0, 0, 0)
    total, matched, shared = (int(value) for value in counts)
    unmatched = total - matched
    unit: Literal["request", "user"] = "user" if key == "user" or shared else "request"
    rows = {}
    variants = con.execute("SELECT DISTINCT variant FROM joined ORDER BY variant").fetchall()
    for (name,) in variants:
        arrays = con.execute(
            """SELECT unit, coalesce(prediction, 'NaN'::DOUBLE) AS prediction,
                      outcome, coalesce(covariate, 'NaN'::DOUBLE) AS covariate
            FROM joined WHERE variant = $variant""",
            {"variant": name},
        ).fetchnumpy()
        rows[str(name)] = VariantRows(
            np.asarray(arrays["unit"], dtype=np.uint64),
            np.asarray(arrays["prediction"], dtype=np.float64),
            np.asarray(arrays["outcome"], dtype=np.float64),
            np.asarray(arrays["covariate"], dtype=np.float64),
        )
    logger.debug("joined %d outcome rows; unit %s", sum(len(r.units) for r in rows.values()), unit)
    return Joined(unit, rows, total, unmatched)


def hourly_outcomes(
    con: duckdb.DuckDBPyConnection, unit: str = "hour"
) -> list[tuple[object, str, int, float]]:
    """Joined outcome rows and their mean per hour (or `unit`) of the record (or of a user's
    first exposure) and variant."""
    if unit not in BUCKETS:
        raise ValueError(f"unit: one of {', '.join(BUCKETS)}, got {unit!r}")
    return [
        (hour, str(variant), int(n), float(mean))
        for hour, variant, n, mean in con.execute(
            f"""SELECT date_trunc('{unit}', ts) AS hour, variant, count(*), avg(outcome)
            FROM joined GROUP BY ALL ORDER BY hour, variant"""
        ).fetchall()
    ]
