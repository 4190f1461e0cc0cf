"""The report's drift figures from real request bodies, parsed by DuckDB's JSON functions."""

import json
from collections.abc import Iterator
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest

from gateway.observe.report import data as report_data
from gateway.observe.report import drift as report_drift
from gateway.observe.report import series as report_series
from tests.helpers import FEATURES, record, write_log

PLANS = ["basic", "plus", "pro"]


def rows(
    seed: int, count: int, shift: float = 0.0, plans: list[float] | None = None
) -> list[list[object]]:
    rng = np.random.default_rng(seed)
    return [
        [
            int(rng.integers(1, 72)),
            round(float(rng.uniform(10, 120)) + shift, 2),
            int(rng.poisson(1.5)),
            str(rng.choice(PLANS, p=plans or [1 / 3, 1 / 3, 1 / 3])),
        ]
        for _ in range(count)
    ]


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = report_data.connect("512MB")
    yield connection
    connection.close()


def figures(rows: list[report_drift.DriftRow]) -> dict[str, report_drift.DriftRow]:
    return {row.name: row for row in rows}


def test_a_shifted_numeric_feature_and_a_reweighted_category_drift(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    champion = [record(f"a{n}", row=row) for n, row in enumerate(rows(1, 800))]
    challenger = [
        record(f"b{n}", row=row, variant="challenger")
        for n, row in enumerate(rows(2, 800, shift=40.0, plans=[0.7, 0.2, 0.1]))
    ]
    write_log(tmp_path / "a.jsonl", [*champion, *challenger])
    report_data.load_records(con, tmp_path, endpoint=None, since=None, until=None)
    report_drift.sample_features(con, ["champion", "challenger"])
    found = figures(report_drift.feature_drift(con, "champion", "challenger"))
    assert sorted(found) == sorted(FEATURES)
    assert found["monthly_charges"].drift.drifted
    assert found["monthly_charges"].drift.ks_statistic is not None
    assert found["plan"].drift.kind == "categorical"
    assert found["plan"].drift.drifted
    assert not found["tenure_months"].drift.drifted
    assert not found["support_calls"].drift.drifted


def test_dataframe_records_bodies_give_the_same_cells_as_dataframe_split(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    split = record("a", row=[3, 89.5, 4, "basic"])
    as_records = record(
        "b",
        variant="challenger",
        request_body=json.dumps(
            {"dataframe_records": [dict(zip(FEATURES, [3, 89.5, 4, "basic"], strict=True))]}
        ).encode(),
    )
    csv_body = record("c", request_body=b"x\n1\n", content_type="text/csv")
    write_log(tmp_path / "a.jsonl", [split, as_records, csv_body])
    report_data.load_records(con, tmp_path, endpoint=None, since=None, until=None)
    report_drift.sample_features(con, ["champion", "challenger"])
    cells = con.execute(
        "SELECT side, feature, number, label FROM feature_cells ORDER BY side, feature"
    ).fetchall()
    assert [cell[1:] for cell in cells if cell[0] == "champion"] == [
        cell[1:] for cell in cells if cell[0] == "challenger"
    ]
    assert ("champion", "plan", None, "basic") in cells
    assert ("champion", "monthly_charges", 89.5, "89.5") in cells


def test_each_side_is_a_reservoir_of_at_most_the_cap(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl", [record(f"a{n}", row=row) for n, row in enumerate(rows(3, 300))]
    )
    report_data.load_records(con, tmp_path, endpoint=None, since=None, until=None)
    report_drift.sample_features(con, ["champion"], cap=50)
    counts = con.execute("SELECT feature, count(*) FROM feature_cells GROUP BY feature").fetchall()
    assert dict(counts) == dict.fromkeys(FEATURES, 50)


def test_a_baseline_file_is_compared_with_each_variant(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "logs" / "a.jsonl",
        [record(f"a{n}", row=row) for n, row in enumerate(rows(4, 500))],
    )
    baseline = pd.DataFrame(rows(5, 500, shift=-30.0), columns=FEATURES)
    baseline.to_parquet(tmp_path / "baseline.parquet")
    report_data.load_records(con, tmp_path / "logs", endpoint=None, since=None, until=None)
    report_drift.sample_features(con, ["champion"])
    report_drift.sample_baseline(con, tmp_path / "baseline.parquet")
    found = figures(report_drift.feature_drift(con, report_drift.baseline_side(), "champion"))
    assert found["monthly_charges"].reference == "baseline"
    assert found["monthly_charges"].drift.drifted
    assert not found["plan"].drift.drifted
    assert found["plan"].drift.kind == "categorical"


def test_prediction_classes_drift_between_variants(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            *(record(f"a{n}", prediction=int(n % 10 == 0)) for n in range(500)),
            *(
                record(f"b{n}", prediction=int(n % 2 == 0), variant="challenger")
                for n in range(500)
            ),
        ],
    )
    report_data.load_records(con, tmp_path, endpoint=None, since=None, until=None)
    report_series.predictions(con)
    found = report_drift.prediction_drift(con, "champion", "challenger")
    assert found is not None
    assert found.drift.kind == "categorical"
    assert found.drift.drifted
