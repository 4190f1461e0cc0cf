"""The report's log side: real records in JSON Lines files, read and aggregated by DuckDB."""

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from gateway.observe.report import data as report_data
from gateway.observe.report import series as report_series
from gateway.observe.report.data import ReportInputError
from tests.helpers import START, record, write_log


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = report_data.connect("512MB")
    yield connection
    connection.close()


def load(
    con: duckdb.DuckDBPyConnection, directory: Path, **options: object
) -> report_data.LoadInfo:
    arguments: dict[str, object] = {"endpoint": None, "since": None, "until": None, **options}
    return report_data.load_records(con, directory, **arguments)  # type: ignore[arg-type]


def by_variant(con: duckdb.DuckDBPyConnection) -> dict[tuple[str, str], report_data.VariantTraffic]:
    return {(row.variant, row.kind): row for row in report_data.traffic(con)}


def test_requests_users_errors_and_latency_are_counted_per_variant(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    records = [
        *(record(f"a{n}", user=f"u{n % 3}", duration_ms=float(n + 1)) for n in range(10)),
        *(record(f"b{n}", user=f"v{n}", variant="challenger", model_version="2") for n in range(4)),
        record("b-err", user="v0", variant="challenger", model_version="2", status_code=500),
    ]
    write_log(tmp_path / "a.jsonl", records[:7])
    write_log(tmp_path / "b.jsonl", records[7:])
    info = load(con, tmp_path)
    assert (info.files, info.records, info.malformed, info.endpoint) == (2, 15, 0, "churn")
    rows = by_variant(con)
    champion, challenger = rows[("champion", "live")], rows[("challenger", "live")]
    assert (champion.requests, champion.users, champion.errors) == (10, 3, 0)
    assert (challenger.requests, challenger.users, challenger.errors) == (5, 4, 1)
    assert challenger.error_rate == pytest.approx(0.2)
    assert champion.p50_ms == pytest.approx(5.5)
    assert champion.p99_ms == pytest.approx(9.91)
    assert challenger.model_versions == ("2",)


def test_users_are_null_when_no_record_carries_a_user_hash(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(tmp_path / "a.jsonl", [record(f"r{n}") for n in range(3)])
    load(con, tmp_path)
    assert by_variant(con)[("champion", "live")].users is None


def test_malformed_lines_are_counted_and_left_out(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    good = [record("r1"), record("r2")]
    no_id = {**record("r3"), "request_id": None}
    write_log(tmp_path / "a.jsonl", [*good, no_id], extra_lines=["{not json", "[1, 2]", ""])
    info = load(con, tmp_path)
    assert info.records == 2
    assert info.malformed == 3


def test_schema_version_1_files_read_without_split_or_client_request_id(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    old = []
    for n in range(6):
        item = record(f"r{n}", user=f"u{n}", variant="champion" if n % 2 else "challenger")
        for field in ("schema_version", "client_request_id", "split", "requester"):
            del item[field]
        old.append(item)
    write_log(tmp_path / "v1.jsonl", old)
    write_log(tmp_path / "v2.jsonl", [record("new", user="u9")])
    info = load(con, tmp_path)
    assert info.records == 7
    assignment = report_data.assignment(con)
    assert assignment.unit == "users"
    assert assignment.observed == {"challenger": 3, "champion": 4}
    assert assignment.splits == [(1, {"champion": 50, "challenger": 50})]


def test_the_time_window_keeps_records_from_since_up_to_before_until(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(tmp_path / "a.jsonl", [record(f"r{n}", timestamp=START + 60 * n) for n in range(10)])
    start = datetime.fromtimestamp(START, UTC)
    info = load(
        con, tmp_path, since=start + timedelta(minutes=2), until=start + timedelta(minutes=5)
    )
    assert info.records == 3
    assert info.first == datetime(2024, 5, 1, 12, 2)  # noqa: DTZ001 - DuckDB gives naive UTC
    with pytest.raises(ReportInputError, match="no records in the time window") as raised:
        load(con, tmp_path, since=start + timedelta(days=1))
    assert not raised.value.usage


def test_forced_shadow_and_fallback_records_are_shown_but_not_live(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            record("r1"),
            record("r2", variant="challenger", routing="forced"),
            record("r1", variant="candidate", routing="shadow", model_version="3"),
            # The challenger failed with a 500 and the champion answered: the request counts
            # once, under the challenger, the variant the split chose.
            record("r3", variant="challenger", model_version="2", status_code=500),
            record("r3", routing="fallback"),
        ],
    )
    load(con, tmp_path)
    assert {key: row.requests for key, row in by_variant(con).items()} == {
        ("champion", "live"): 1,
        ("challenger", "live"): 1,
        ("challenger", "forced"): 1,
        ("candidate", "shadow"): 1,
        ("champion", "fallback"): 1,
    }
    assert report_data.assignment(con).observed == {"champion": 1, "challenger": 1}


def test_several_endpoints_need_one_chosen(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    write_log(tmp_path / "a.jsonl", [record("r1"), record("r2", endpoint="fraud")])
    with pytest.raises(ReportInputError, match="several endpoints"):
        load(con, tmp_path)
    with pytest.raises(ReportInputError, match="no records of 'nope'"):
        load(con, tmp_path, endpoint="nope")
    assert load(con, tmp_path, endpoint="fraud").records == 1


def test_a_missing_or_empty_directory_is_a_usage_error(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    with pytest.raises(ReportInputError, match="no such directory") as raised:
        load(con, tmp_path / "missing")
    assert raised.value.usage
    with pytest.raises(ReportInputError, match=r"no \*\.jsonl files"):
        load(con, tmp_path)


def test_predictions_give_numeric_quantiles_and_class_shares(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            *(record(f"a{n}", prediction=n % 2) for n in range(8)),
            record("b1", variant="challenger", prediction="yes"),
            record("b2", variant="challenger", prediction="no"),
            record("b3", variant="challenger", prediction="yes"),
            record("err", status_code=503),
        ],
    )
    load(con, tmp_path)
    stats = report_series.predictions(con)
    assert stats["champion"].count == 8
    assert stats["champion"].mean == pytest.approx(0.5)
    assert stats["champion"].quantiles["p50"] == pytest.approx(0.5)
    assert stats["champion"].classes == {"0": 0.5, "1": 0.5}
    assert stats["challenger"].mean is None
    assert stats["challenger"].classes == pytest.approx({"yes": 2 / 3, "no": 1 / 3})


def test_requests_are_the_unit_of_assignment_without_sticky_users(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    records = [record(f"r{n}", split={"champion": 90, "challenger": 10}) for n in range(6)]
    records += [
        record(f"s{n}", variant="challenger", split={"champion": 50, "challenger": 50})
        for n in range(2)
    ]
    write_log(tmp_path / "a.jsonl", records)
    load(con, tmp_path)
    assignment = report_data.assignment(con)
    assert assignment.unit == "requests"
    assert assignment.observed == {"champion": 6, "challenger": 2}
    assert sorted(assignment.splits, key=lambda pair: pair[0]) == [
        (2, {"champion": 50, "challenger": 50}),
        (6, {"champion": 90, "challenger": 10}),
    ]


def test_a_user_counts_once_under_the_split_of_their_first_record(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            record("r1", user="u1", timestamp=START, split={"champion": 90, "challenger": 10}),
            record("r2", user="u1", timestamp=START + 5, split={"champion": 50, "challenger": 50}),
            record("r3", user="u2", timestamp=START + 6, split={"champion": 50, "challenger": 50}),
        ],
    )
    load(con, tmp_path)
    assignment = report_data.assignment(con)
    assert assignment.observed == {"champion": 2}
    assert sorted(assignment.splits, key=lambda pair: json.dumps(pair[1])) == [
        (1, {"champion": 50, "challenger": 50}),
        (1, {"champion": 90, "challenger": 10}),
    ]


def test_hourly_rows_count_live_requests_errors_and_latency(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            record("r1", timestamp=START + 10, duration_ms=2.0),
            record("r2", timestamp=START + 20, duration_ms=4.0, status_code=500),
            record("r3", timestamp=START + 3600, duration_ms=8.0),
            record("r4", timestamp=START + 30, routing="forced"),
        ],
    )
    load(con, tmp_path)
    rows = report_series.hourly(con)
    assert [(row.hour.hour, row.requests, row.errors, row.mean_ms) for row in rows] == [
        (12, 2, 1, 3.0),
        (13, 1, 0, 8.0),
    ]


def test_shadow_agreement_compares_each_shadow_with_the_live_answer(
    tmp_path: Path, con: duckdb.DuckDBPyConnection
) -> None:
    write_log(
        tmp_path / "a.jsonl",
        [
            record("r1", prediction=1),
            record("r1", prediction=1, variant="candidate", routing="shadow", model_version="3"),
            record("r2", prediction=0),
            record("r2", prediction=1, variant="candidate", routing="shadow", model_version="3"),
            record("r3", prediction=0, variant="candidate", routing="shadow", model_version="3"),
        ],
    )
    load(con, tmp_path)
    assert report_series.shadow_agreement(con) == [
        report_series.ShadowAgreement("candidate", "3", 3, 2, 1)
    ]


@pytest.mark.parametrize(
    ("seconds", "unit"),
    [(0, "second"), (30, "second"), (600, "minute"), (6 * 3600, "hour"), (30 * 86400, "day")],
)
def test_time_series_buckets_cut_the_window_into_at_least_six(seconds: int, unit: str) -> None:
    first = datetime(2024, 5, 1, 12, tzinfo=UTC)
    assert report_series.series_unit(first, first + timedelta(seconds=seconds)) == unit


def test_time_series_rows_can_be_by_minute(tmp_path: Path, con: duckdb.DuckDBPyConnection) -> None:
    write_log(tmp_path / "a.jsonl", [record(f"r{n}", timestamp=START + 20 * n) for n in range(6)])
    load(con, tmp_path)
    rows = report_series.hourly(con, "minute")
    assert [(row.hour.minute, row.requests) for row in rows] == [(0, 3), (1, 3)]
    with pytest.raises(ValueError, match="unit: one of"):
        report_series.hourly(con, "fortnight")
