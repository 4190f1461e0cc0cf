"""The report's outcome side: outcome files read by DuckDB and joined to real records by each key."""

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pytest

from gateway.core.judging import Key
from gateway.core.record import user_key_hash
from gateway.observe.report import data as report_data
from gateway.observe.report import outcomes as report_outcomes
from gateway.observe.report.data import ReportInputError
from tests.helpers import SECRET, START, record, write_csv, write_log


@pytest.fixture
def con(tmp_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    write_log(
        tmp_path / "logs" / "a.jsonl",
        [
            record("r1", user="alice", client_request_id="c1", prediction=1, timestamp=START),
            record("r2", user="alice", client_request_id="c2", prediction=0, timestamp=START + 60),
            record("r3", user="bob", variant="challenger", model_version="2", prediction=1),
            record("r4", user="carol", variant="challenger", model_version="2", prediction=0),
            record("r5", variant="challenger", routing="forced", prediction=1),
        ],
    )
    connection = report_data.connect("512MB")
    report_data.load_records(connection, tmp_path / "logs", endpoint=None, since=None, until=None)
    yield connection
    connection.close()


def joined(
    con: duckdb.DuckDBPyConnection,
    paths: list[Path],
    key: Key = "request_id",
    **options: object,
) -> report_outcomes.Joined:
    arguments: dict[str, object] = {
        "column": "outcome",
        "covariate": None,
        "secret": SECRET,
        **options,
    }
    report_outcomes.load_outcomes(con, paths, key=key, **arguments)  # type: ignore[arg-type]
    return report_outcomes.join_outcomes(con, key)


def test_outcomes_join_live_records_by_request_id(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(
        tmp_path / "o.csv",
        ["request_id", "outcome"],
        [["r1", 1], ["r2", 0], ["r3", 1], ["r4", 1], ["r5", 1], ["nobody", 1]],
    )
    result = joined(con, [path])
    assert (result.outcome_rows, result.unmatched) == (6, 2)  # r5 was forced
    assert sorted(result.rows) == ["challenger", "champion"]
    assert sorted(result.rows["champion"].outcomes.tolist()) == [0.0, 1.0]
    assert sorted(result.rows["champion"].predictions.tolist()) == [0.0, 1.0]
    assert result.unit == "user"  # alice has two records
    assert len(set(result.rows["champion"].units.tolist())) == 1


def test_requests_are_the_unit_when_no_user_has_two_joined_records(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(tmp_path / "o.csv", ["request_id", "outcome"], [["r1", 1], ["r3", 0]])
    assert joined(con, [path]).unit == "request"


def test_outcomes_join_by_client_request_id(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_csv(tmp_path / "o.csv", ["client_request_id", "outcome"], [["c2", 5.5]])
    result = joined(con, [path], key="client_request_id")
    assert result.rows["champion"].outcomes.tolist() == [5.5]
    assert result.rows["champion"].predictions.tolist() == [0.0]


def test_raw_user_ids_are_hashed_with_the_secret_to_meet_the_records(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(
        tmp_path / "o.csv",
        ["user_id", "outcome"],
        [["alice", 1], ["alice", 0], ["bob", 1], ["mallory", 1]],
    )
    result = joined(con, [path], key="user")
    assert result.unit == "user"
    assert result.unmatched == 1
    assert sorted(result.rows["champion"].outcomes.tolist()) == [0.0, 1.0]
    assert result.rows["challenger"].outcomes.tolist() == [1.0]
    expected = con.execute("SELECT hash($h)", {"h": user_key_hash("alice", SECRET.encode())})
    assert result.rows["champion"].units.tolist() == [expected.fetchone()[0]] * 2  # type: ignore[index]


def test_user_outcomes_before_the_first_exposure_are_left_out(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    path = write_csv(
        tmp_path / "o.csv",
        ["user_id", "outcome", "timestamp"],
        [["alice", 1, "2024-05-01T11:59:00"], ["alice", 0, "2024-05-01T12:30:00"]],
    )
    assert joined(con, [path], key="user").rows["champion"].outcomes.tolist() == [0.0]


def test_user_keys_need_the_secret(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_csv(tmp_path / "o.csv", ["user_id", "outcome"], [["alice", 1]])
    with pytest.raises(ReportInputError, match="user_key_secret"):
        joined(con, [path], key="user", secret=None)


def test_parquet_and_json_lines_files_stack_by_column_name(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    pd.DataFrame({"outcome": [1.0], "request_id": ["r1"]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.jsonl").write_text(json.dumps({"request_id": "r3", "outcome": 0}) + "\n")
    result = joined(con, [tmp_path / "a.parquet", tmp_path / "b.jsonl"])
    assert result.outcome_rows == 2
    assert result.rows["champion"].outcomes.tolist() == [1.0]
    assert result.rows["challenger"].outcomes.tolist() == [0.0]


def test_covariates_come_with_their_rows(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    path = write_csv(tmp_path / "o.csv", ["request_id", "outcome", "before"], [["r3", 1, 0.25]])
    result = joined(con, [path], covariate="before")
    assert result.rows["challenger"].covariates.tolist() == [0.25]
    path = write_csv(tmp_path / "p.csv", ["request_id", "outcome"], [["r3", 1]])
    assert np.isnan(joined(con, [path]).rows["challenger"].covariates).all()


@pytest.mark.parametrize(
    ("header", "options", "message"),
    [
        (
            ["request_id", "converted"],
            {},
            "--outcome-column: the outcomes have no column 'outcome'",
        ),
        (["id", "outcome"], {}, "--key: the outcomes have no column 'request_id'"),
        (["request_id", "outcome"], {"covariate": "x"}, "--covariate: the outcomes have no column"),
    ],
)
def test_an_unknown_column_is_named(
    tmp_path: Path,
    con: duckdb.DuckDBPyConnection,
    header: list[str],
    options: dict[str, Any],
    message: str,
) -> None:
    path = write_csv(tmp_path / "o.csv", header, [["r1", 1]])
    with pytest.raises(ReportInputError, match=message):
        joined(con, [path], **options)


def test_unreadable_or_unusable_outcome_files_are_usage_errors(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    with pytest.raises(ReportInputError, match="no such file"):
        joined(con, [tmp_path / "missing.csv"])
    with pytest.raises(ReportInputError, match=r"not a \.csv, \.parquet or \.jsonl"):
        joined(con, [tmp_path / "o.xlsx"])
    (tmp_path / "bad.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(ReportInputError, match="cannot read"):
        joined(con, [tmp_path / "bad.parquet"])
    path = write_csv(tmp_path / "o.csv", ["request_id", "outcome"], [["r1", "maybe"]])
    with pytest.raises(ReportInputError, match="non-numeric"):
        joined(con, [path])
