import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from gateway.observe.log_summary import (
    LatencyHistogram,
    Summary,
    VariantSummary,
    files_in,
    parse_since,
    render_table,
    run,
    summarize,
    to_json,
)

NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)


def line(**fields: Any) -> str:
    record: dict[str, Any] = {
        "request_id": "r",
        "timestamp": "2024-05-01T11:00:00.000Z",
        "endpoint": "churn",
        "model": "churn",
        "variant": "champion",
        "model_version": "1",
        "routing": "random",
        "user_key_hash": None,
        "status_code": 200,
        "duration_ms": 10.0,
        "request": "{}",
        "request_encoding": "utf-8",
        "response": '{"predictions": [0.5]}',
        "error": None,
        "truncated": False,
    }
    return json.dumps({**record, **fields})


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(text + "\n" for text in lines), encoding="utf-8")
    return path


def summary_of(tmp_path: Path, lines: list[str], since: datetime | None = None) -> Summary:
    return summarize([write(tmp_path / "log.jsonl", lines)], since)


def row(summary: Summary, variant: str, endpoint: str = "churn") -> VariantSummary:
    [found] = [r for r in summary.variants if (r.endpoint, r.variant) == (endpoint, variant)]
    return found


def histogram_of(values: list[float]) -> LatencyHistogram:
    histogram = LatencyHistogram()
    for value in values:
        histogram.add(value)
    return histogram


@pytest.mark.parametrize(("q", "exact"), [(0.5, 500), (0.95, 950), (0.99, 990), (1.0, 1000)])
def test_percentiles_of_1_to_1000_ms_are_within_one_percent(q: float, exact: float) -> None:
    [estimate] = histogram_of([float(ms) for ms in range(1, 1001)]).quantiles([q])
    assert estimate == pytest.approx(exact, rel=0.01)


@pytest.mark.parametrize("value", [0.001, 0.0123, 0.5, 1.0, 7.77, 123.456, 9_999.0, 3.6e6, 8.64e7])
def test_any_latency_is_reported_within_one_percent(value: float) -> None:
    assert (
        histogram_of([value] * 3).quantiles([0.0, 0.5, 1.0]) == [pytest.approx(value, rel=0.01)] * 3
    )


def test_latencies_below_a_microsecond_count_as_zero() -> None:
    assert histogram_of([0.0, 0.0, 0.0, 5.0]).quantiles([0.5, 1.0]) == [
        0.0,
        pytest.approx(5.0, rel=0.01),
    ]


def test_an_empty_histogram_has_no_percentiles() -> None:
    assert LatencyHistogram().quantiles([0.5, 0.99]) == [None, None]


def test_share_and_error_rate_per_variant(tmp_path: Path) -> None:
    lines = [line(variant="champion") for _ in range(90)]
    lines += [line(variant="challenger") for _ in range(7)]
    lines += [line(variant="challenger", status_code=500, response=None, error="boom")] * 2
    lines += [line(variant="challenger", status_code=200, error="late failure")]
    summary = summary_of(tmp_path, lines)

    champion, challenger = row(summary, "champion"), row(summary, "challenger")
    assert (champion.requests, champion.share, champion.errors, champion.error_rate) == (
        90,
        0.9,
        0,
        0.0,
    )
    assert (challenger.requests, challenger.share, challenger.errors) == (10, 0.1, 3)
    assert challenger.error_rate == pytest.approx(0.3)


def test_client_errors_count_as_errors(tmp_path: Path) -> None:
    summary = summary_of(tmp_path, [line(), line(status_code=400, response=None)])
    assert row(summary, "champion").error_rate == 0.5


def test_shares_are_per_endpoint(tmp_path: Path) -> None:
    lines = [line(endpoint="churn")] * 3 + [line(endpoint="fraud", variant="v1")]
    summary = summary_of(tmp_path, lines)
    assert row(summary, "champion").share == 1.0
    assert row(summary, "v1", endpoint="fraud").share == 1.0


def test_shadow_records_get_their_own_row_outside_the_endpoint_total(tmp_path: Path) -> None:
    lines = [line(variant="champion")] * 3 + [line(variant="challenger")]
    lines += [line(variant="candidate", routing="shadow")] * 2
    summary = summary_of(tmp_path, lines)

    assert [(r.variant, r.shadow) for r in summary.variants] == [
        ("challenger", False),
        ("champion", False),
        ("candidate (shadow)", True),
    ]
    assert row(summary, "champion").share == 0.75
    assert row(summary, "candidate (shadow)").share == 0.5


def test_latency_percentiles_per_variant(tmp_path: Path) -> None:
    lines = [line(duration_ms=float(ms)) for ms in range(1, 101)]
    lines += [line(variant="challenger", duration_ms=1000.0)]
    summary = summary_of(tmp_path, lines)

    champion = row(summary, "champion")
    assert champion.p50_ms == pytest.approx(50, rel=0.01)
    assert champion.p95_ms == pytest.approx(95, rel=0.01)
    assert champion.p99_ms == pytest.approx(99, rel=0.01)
    assert row(summary, "challenger").p50_ms == pytest.approx(1000, rel=0.01)


@pytest.mark.parametrize(
    ("responses", "mean"),
    [
        (['{"predictions": [0, 1, 1, 0]}'], 0.5),
        (['{"predictions": [0.2]}', '{"predictions": [0.4, 0.6]}'], 0.4),
        (['{"predictions": [[0.1, 0.9], [0.3, 0.7]]}'], 0.2),
        (['{"predictions": [{"score": 2, "label": "a"}, {"label": "b", "score": 4}]}'], 3.0),
        (['{"predictions": [["yes", 1.0], ["no", 3.0]]}'], 2.0),
        (['{"predictions": 7}'], 7.0),
        (['{"predictions": [1, "x", true, null, 3]}'], 2.0),
        (['{"predictions": [1, 3]}', '{"predictions": ["a", "b"]}', "not json", "[1, 2]"], 2.0),
        (['{"predictions": [1, 3]}', '{"predictions": [0.2, 0.'], 2.0),
        (['{"predictions": ["a", "b"]}'], None),
        (['{"outputs": [1]}'], None),
    ],
)
def test_mean_prediction_averages_numbers_and_ignores_the_rest(
    tmp_path: Path, responses: list[str], mean: float | None
) -> None:
    summary = summary_of(tmp_path, [line(response=response) for response in responses])
    assert row(summary, "champion").mean_prediction == pytest.approx(mean)


def test_mean_prediction_leaves_out_failed_requests(tmp_path: Path) -> None:
    lines = [
        line(response='{"predictions": [1]}'),
        line(response='{"predictions": [100]}', status_code=500),
        line(response='{"predictions": [100]}', error="timeout"),
    ]
    assert row(summary_of(tmp_path, lines), "champion").mean_prediction == 1.0


def test_malformed_lines_are_skipped_and_counted(tmp_path: Path) -> None:
    good = line()
    record = json.loads(good)
    lines = [
        good,
        "not json",
        '{"endpoint": "churn"',
        "[1, 2, 3]",
        "42",
        json.dumps({key: value for key, value in record.items() if key != "variant"}),
        json.dumps({**record, "timestamp": "yesterday"}),
        json.dumps({**record, "status_code": None}),
        json.dumps({**record, "duration_ms": -1}),
        json.dumps({**record, "duration_ms": "fast"}),
        json.dumps({**record, "endpoint": 7}),
        "",
        "   ",
        good,
    ]
    path = write(tmp_path / "log.jsonl", lines)
    with path.open("ab") as handle:
        handle.write(b"\xff\xfe torn\n")
    summary = summarize([path], None)

    assert summary.malformed == 11
    assert row(summary, "champion").requests == 2


def test_records_from_several_files_are_combined(tmp_path: Path) -> None:
    first = write(tmp_path / "a.jsonl", [line(variant="champion")] * 2)
    second = write(tmp_path / "b.jsonl", [line(variant="champion"), line(variant="challenger")])
    summary = summarize(iter([first, second]), None)
    assert row(summary, "champion").requests == 3
    assert row(summary, "challenger").share == 0.25


def test_since_leaves_out_older_records_without_counting_them_malformed(tmp_path: Path) -> None:
    lines = [
        line(timestamp="2024-05-01T10:59:59.999Z", variant="old"),
        line(timestamp="2024-05-01T11:00:00.000Z", variant="new"),
        line(timestamp="2024-05-01T12:59:59.000+02:00", variant="old"),
        line(timestamp="2024-05-01T11:30:00", variant="new"),
    ]
    summary = summary_of(tmp_path, lines, since=datetime(2024, 5, 1, 11, 0, tzinfo=UTC))
    assert [(r.variant, r.requests) for r in summary.variants] == [("new", 2)]
    assert summary.malformed == 0


def test_a_naive_since_is_taken_as_utc(tmp_path: Path) -> None:
    lines = [line(timestamp="2024-05-01T10:00:00Z"), line(timestamp="2024-05-01T12:00:00Z")]
    naive = datetime(2024, 5, 1, 11, 0)  # noqa: DTZ001 - a naive time is what this test gives
    summary = summary_of(tmp_path, lines, since=naive)
    assert row(summary, "champion").requests == 1


def test_no_records_give_no_rows(tmp_path: Path) -> None:
    assert summarize([], None) == Summary([], 0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - timedelta(seconds=90)),
        ("30m", NOW - timedelta(minutes=30)),
        ("1h", NOW - timedelta(hours=1)),
        ("2d", NOW - timedelta(days=2)),
        (" 1h ", NOW - timedelta(hours=1)),
        ("0s", NOW),
        ("2024-04-30T08:15:00Z", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30T08:15:00.250Z", datetime(2024, 4, 30, 8, 15, 0, 250_000, tzinfo=UTC)),
        ("2024-04-30T10:15:00+02:00", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30T08:15:00", datetime(2024, 4, 30, 8, 15, tzinfo=UTC)),
        ("2024-04-30", datetime(2024, 4, 30, tzinfo=UTC)),
    ],
)
def test_parse_since_accepts_iso_times_and_durations(text: str, expected: datetime) -> None:
    assert parse_since(text, NOW) == expected


def test_parse_since_keeps_the_offset_it_was_given() -> None:
    parsed = parse_since("2024-04-30T10:15:00+02:00", NOW)
    assert parsed.utcoffset() == timezone(timedelta(hours=2)).utcoffset(None)


@pytest.mark.parametrize(
    "text", ["", "1w", "1.5h", "-1h", "h1", "1 h", "yesterday", "2024-13-01", "99999999999d"]
)
def test_parse_since_rejects_anything_else_with_a_clear_message(text: str) -> None:
    with pytest.raises(ValueError, match=r"ISO 8601 time .* or a duration such as 90s, 30m"):
        parse_since(text, NOW)


def sample_rows() -> list[VariantSummary]:
    return [
        VariantSummary("churn", "champion", False, 900, 0.9, 9, 0.01, 12.3, 45.6, 78.9, 0.31234),
        VariantSummary("churn", "challenger", False, 100, 0.1, 0, 0.0, 1.0, 2.0, 3.0, None),
        VariantSummary(
            "churn", "candidate (shadow)", True, 50, 0.05, 50, 1.0, None, None, None, None
        ),
    ]


def test_table_has_a_header_and_one_aligned_line_per_row() -> None:
    table = render_table(sample_rows(), malformed=0).splitlines()

    assert table[0].split() == [
        "endpoint", "variant", "requests", "share", "errors", "p50", "ms", "p95", "ms", "p99",
        "ms", "mean", "prediction",
    ]  # fmt: skip
    assert table[1].split() == [
        "churn", "champion", "900", "90.0%", "1.0%", "12.3", "45.6", "78.9", "0.3123",
    ]  # fmt: skip
    assert table[2].split()[-1] == "-"
    assert table[3].split() == [
        "churn", "candidate", "(shadow)", "50", "5.0%", "100.0%", "-", "-", "-", "-",
    ]  # fmt: skip
    # Numbers are right-aligned: every "requests" cell ends where the header does.
    end = table[0].index("requests") + len("requests")
    assert all(text[end - 1].isdigit() and text[end] == " " for text in table[1:])
    assert len(table) == 4


def test_table_reports_malformed_lines_and_an_empty_log() -> None:
    assert (
        render_table(sample_rows(), malformed=3).splitlines()[-1] == "3 malformed line(s) skipped"
    )
    assert render_table([], malformed=0).splitlines()[-1] == "(no records)"


def test_json_has_every_field_of_every_row_and_the_malformed_count() -> None:
    document = json.loads(to_json(sample_rows(), malformed=2))
    assert document["malformed_lines"] == 2
    assert document["variants"][0] == {
        "endpoint": "churn",
        "variant": "champion",
        "shadow": False,
        "requests": 900,
        "share": 0.9,
        "errors": 9,
        "error_rate": 0.01,
        "p50_ms": 12.3,
        "p95_ms": 45.6,
        "p99_ms": 78.9,
        "mean_prediction": 0.31234,
    }
    assert document["variants"][2]["p50_ms"] is None


def test_files_in_lists_only_jsonl_files_sorted(tmp_path: Path) -> None:
    for name in ["b.jsonl", "a.jsonl", "notes.txt", "c.jsonl.gz"]:
        (tmp_path / name).write_text("")
    (tmp_path / "d.jsonl").mkdir()
    assert [path.name for path in files_in(tmp_path)] == ["a.jsonl", "b.jsonl"]


def run_command(
    directory: Path, since: str | None = None, as_json: bool = False
) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = run(directory, since=since, as_json=as_json, out=out, err=err, now=NOW)
    return status, out.getvalue(), err.getvalue()


def test_run_prints_the_table(tmp_path: Path) -> None:
    write(tmp_path / "inference-1.jsonl", [line(), "garbage"])
    status, out, err = run_command(tmp_path)
    assert (status, err) == (0, "")
    assert out.splitlines()[1].split()[:3] == ["churn", "champion", "1"]
    assert out.splitlines()[-1] == "1 malformed line(s) skipped"


def test_run_prints_json_and_applies_since(tmp_path: Path) -> None:
    write(tmp_path / "inference-1.jsonl", [line(timestamp="2024-05-01T11:30:00Z"), line()])
    status, out, _ = run_command(tmp_path, since="45m", as_json=True)
    assert status == 0
    assert [row["requests"] for row in json.loads(out)["variants"]] == [1]


def test_run_fails_with_status_2_for_a_missing_directory(tmp_path: Path) -> None:
    status, out, err = run_command(tmp_path / "missing")
    assert (status, out) == (2, "")
    assert "missing is not a directory" in err


def test_run_fails_with_status_2_for_a_bad_since(tmp_path: Path) -> None:
    status, out, err = run_command(tmp_path, since="last week")
    assert (status, out) == (2, "")
    assert err.startswith("error: --since: expected an ISO 8601 time")


def test_requests_refused_before_routing_get_a_row_of_their_own(tmp_path: Path) -> None:
    path = tmp_path / "inference.jsonl"
    lines = [
        {
            "request_id": "a",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "endpoint": "churn",
            "variant": "champion",
            "routing": "random",
            "status_code": 200,
            "duration_ms": 1.0,
            "response": '{"predictions": [1]}',
            "error": None,
        },
        {
            "request_id": "b",
            "timestamp": "2026-01-01T00:00:00.000Z",
            "endpoint": "churn",
            "variant": None,
            "routing": None,
            "status_code": 415,
            "duration_ms": 0.5,
            "response": None,
            "error": "bad type",
        },
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    summary = summarize([path], since=None)
    assert summary.malformed == 0
    assert [(row.variant, row.requests, row.errors) for row in summary.variants] == [
        ("(not routed)", 1, 1),
        ("champion", 1, 0),
    ]
