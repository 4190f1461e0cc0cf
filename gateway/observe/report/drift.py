"""The report's drift figures: input features and predictions, variant against variant or baseline.

Inputs are parsed from the logged request bodies in DuckDB with its JSON functions: `dataframe_split`
(columns zipped with each row) and `dataframe_records` (each record's keys) bodies become cells
(side, feature, number, label); other bodies (CSV, Parquet, tensors) are skipped. Each side is a
reservoir sample of at most `cap` records per variant (`USING SAMPLE reservoir(cap ROWS)` with a
fixed seed), so the numbers that reach numpy are bounded whatever the size of the logs. A
`--baseline` file (CSV or Parquet of feature columns) is sampled the same way. A feature whose
values are all numbers is numeric (KS test and PSI over the reference's deciles); any other is
categorical (chi-square and PSI over categories, counted in SQL). The figures are
gateway.core.stats.drift's.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import duckdb
import numpy as np

from gateway.core.stats.drift import FeatureDrift, categorical_drift, numeric_drift
from gateway.observe.report.data import LIVE_SQL, ReportInputError

logger = logging.getLogger(__name__)

SAMPLE_CAP: Final = 100_000
SEED: Final = 20_240_501
_MAX_CLASSES: Final = 20
_BASELINE: Final = "__baseline__"
# Each sampled body is parsed once, into the parts that hold its cells.
_PARTS: Final = "['$.dataframe_split.columns', '$.dataframe_split.data', '$.dataframe_records']"


@dataclass(frozen=True)
class DriftRow:
    """One feature's drift from a reference side to a current side."""

    name: str
    reference: str
    current: str
    drift: FeatureDrift


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def sample_features(
    con: duckdb.DuckDBPyConnection, variants: list[str], *, cap: int = SAMPLE_CAP
) -> None:
    """Fill the table `feature_cells` with the input cells of a reservoir sample per variant."""
    samples = " UNION ALL ".join(
        f"""SELECT side, json_extract(try_cast(request AS JSON), {_PARTS}) AS parts FROM (
                SELECT variant AS side, request FROM records
                WHERE {LIVE_SQL} AND variant = {_quoted(name)} AND request_encoding = 'utf-8'
                  AND starts_with(request, '{{'))
            USING SAMPLE reservoir({int(cap)} ROWS) REPEATABLE ({SEED})"""
        for name in variants
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE feature_cells AS
        WITH sample AS MATERIALIZED ({samples}),
        split_rows AS (
            SELECT side, json_extract_string(parts[1], '$[*]') AS cols,
                   unnest(json_extract(parts[2], '$[*]')) AS row_
            FROM sample WHERE parts[2] IS NOT NULL),
        split_cells AS (
            SELECT side, unnest(list_zip(cols, json_extract(row_, '$[*]'))) AS kv FROM split_rows),
        record_rows AS (
            SELECT side, unnest(json_extract(parts[3], '$[*]')) AS r
            FROM sample WHERE parts[3] IS NOT NULL),
        record_keys AS (SELECT side, r, unnest(json_keys(r)) AS k FROM record_rows),
        cells AS (
            SELECT side, kv[1] AS feature, kv[2] AS value FROM split_cells
            UNION ALL
            SELECT side, k, json_extract(r, '$."' || replace(k, '"', '\\"') || '"') FROM record_keys)
        SELECT side, feature,
               CASE WHEN json_type(value) IN ('BIGINT', 'UBIGINT', 'DOUBLE')
                    THEN value::DOUBLE END AS number,
               CASE WHEN json_type(value) <> 'NULL' THEN json_extract_string(value, '$') END AS label
        FROM cells WHERE feature IS NOT NULL"""
    )


def sample_baseline(con: duckdb.DuckDBPyConnection, path: Path, *, cap: int = SAMPLE_CAP) -> None:
    """Add a reservoir sample of a baseline file's columns to `feature_cells` as side __baseline__."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        reader = f"read_csv({_quoted(str(path))}, header = true)"
    elif suffix in (".parquet", ".pq"):
        reader = f"read_parquet({_quoted(str(path))})"
    else:
        raise ReportInputError(f"--baseline: {path}: not a .csv or .parquet file")
    if not path.is_file():
        raise ReportInputError(f"--baseline: no such file: {path}")
    try:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE baseline_sample AS
            SELECT * FROM {reader} USING SAMPLE reservoir({int(cap)} ROWS) REPEATABLE ({SEED})"""
        )
        columns = con.execute("DESCRIBE baseline_sample").fetchall()
    except duckdb.Error as exc:
        raise ReportInputError(f"--baseline: cannot read: {str(exc).splitlines()[0]}") from exc
    for name, kind, *_ in columns:
        numeric = any(word in kind for word in ("INT", "DOUBLE", "FLOAT", "DECIMAL", "REAL"))
        value = f'"{name.replace(chr(34), chr(34) * 2)}"'
        con.execute(
            f"""INSERT INTO feature_cells
            SELECT '{_BASELINE}', $name, {f"{value}::DOUBLE" if numeric else "NULL"},
                   {value}::VARCHAR FROM baseline_sample WHERE {value} IS NOT NULL""",
            {"name": name},
        )


def feature_drift(con: duckdb.DuckDBPyConnection, reference: str, current: str) -> list[DriftRow]:
    """Drift of every feature both sides have, from `reference` to `current` (a variant or baseline)."""
    features = con.execute(
        """SELECT feature, count(label) = count(number) AS numeric FROM feature_cells
        WHERE side IN ($a, $b) GROUP BY feature
        HAVING count(DISTINCT side) FILTER (WHERE label IS NOT NULL) = 2 ORDER BY feature""",
        {"a": reference, "b": current},
    ).fetchall()
    rows = []
    for feature, numeric in features:
        if numeric:
            values = [
                con.execute(
                    "SELECT number FROM feature_cells WHERE side = $side AND feature = $f "
                    "AND number IS NOT NULL",
                    {"side": side, "f": feature},
                ).fetchnumpy()["number"]
                for side in (reference, current)
            ]
            drift = numeric_drift(
                np.asarray(values[0], dtype=np.float64),
                np.asarray(values[1], dtype=np.float64),
                name=feature,
            )
        else:
            drift = categorical_drift(
                _label_counts(con, "feature_cells", reference, feature),
                _label_counts(con, "feature_cells", current, feature),
                name=feature,
            )
        rows.append(DriftRow(feature, _shown(reference), _shown(current), drift))
    return rows


def _label_counts(
    con: duckdb.DuckDBPyConnection, table: str, side: str, feature: str | None
) -> dict[str, int]:
    where = "side = $side" + (" AND feature = $f" if feature is not None else "")
    params = {"side": side, **({"f": feature} if feature is not None else {})}
    return {
        str(label): int(count)
        for label, count in con.execute(
            f"SELECT label, count(*) FROM {table} WHERE {where} AND label IS NOT NULL GROUP BY label",
            params,
        ).fetchall()
    }


def _shown(side: str) -> str:
    return "baseline" if side == _BASELINE else side


def baseline_side() -> str:
    """The side name a baseline file's cells carry in `feature_cells`."""
    return _BASELINE


def prediction_drift(
    con: duckdb.DuckDBPyConnection, reference: str, current: str, *, cap: int = SAMPLE_CAP
) -> DriftRow | None:
    """Drift of the predictions from one live variant to another (table `prediction_values`)."""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE prediction_sample AS
        SELECT * FROM (SELECT variant AS side, number, label FROM prediction_values
                       WHERE variant = $a) USING SAMPLE reservoir({int(cap)} ROWS) REPEATABLE ({SEED})
        UNION ALL
        SELECT * FROM (SELECT variant AS side, number, label FROM prediction_values
                       WHERE variant = $b) USING SAMPLE reservoir({int(cap)} ROWS) REPEATABLE ({SEED})""",
        {"a": reference, "b": current},
    )
    row = con.execute(
        """SELECT count(DISTINCT side), count(DISTINCT label), count(label), count(number), count(*)
        FROM prediction_sample"""
    ).fetchone()
    if row is None or row[0] < 2:
        return None
    _, classes, labelled, numbers, total = row
    if labelled == total and classes <= _MAX_CLASSES:
        drift = categorical_drift(
            _label_counts(con, "prediction_sample", reference, None),
            _label_counts(con, "prediction_sample", current, None),
            name="prediction",
        )
    elif numbers == total:
        values = [
            con.execute(
                "SELECT number FROM prediction_sample WHERE side = $side", {"side": side}
            ).fetchnumpy()["number"]
            for side in (reference, current)
        ]
        drift = numeric_drift(
            np.asarray(values[0], dtype=np.float64),
            np.asarray(values[1], dtype=np.float64),
            name="prediction",
        )
    else:
        return None
    return DriftRow("prediction", reference, current, drift)
