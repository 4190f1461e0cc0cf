import io
import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from gateway.core.record import build_record
from gateway.observe.export.columns import DATABRICKS, PARQUET, epoch_ms
from gateway.observe.export.parts import Window
from gateway.observe.export.write import ExportResult, export, run

# 22:00 UTC: records two hours or more later fall on the next date.
T0 = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
NOW = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)


def record(minutes: float = 0, **overrides: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "request_id": f"req-{minutes:08.2f}",
        "timestamp": (T0 + timedelta(minutes=minutes)).timestamp(),
        "endpoint": "churn",
        "model": "churn-model",
        "variant": "champion",
        "model_version": "3",
        "routing": "random",
        "split": {"champion": 90, "challenger": 10},
        "user_key_hash": None,
        "requester": "batch-job",
        "client_request_id": None,
        "status_code": 200,
        "duration_ms": 12.5,
        "request_body": b'{"inputs": [[3, 89.5]]}',
        "content_type": "application/json",
        "response_body": b'{"predictions": [0.7]}',
        "error": None,
        "max_payload_bytes": None,
    }
    return build_record(**{**fields, **overrides})


def v1(fields: dict[str, Any]) -> dict[str, Any]:
    """A record as schema version 1 wrote it: without the fields that version 2 added."""
    gone = {"schema_version", "client_request_id", "split", "requester"}
    return {name: value for name, value in fields.items() if name not in gone}


def write_log(directory: Path, lines: list[dict[str, Any] | str], name: str = "a") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"inference-host-1-20261129T220000Z-{name}.jsonl"
    text = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    path.write_text(text, encoding="utf-8")
    return path


def files(out: Path) -> list[str]:
    return sorted(str(path.relative_to(out)) for path in out.rglob("*") if path.is_file())


def rows(out: Path, order: str = "request_id") -> list[dict[str, Any]]:
    with duckdb.connect() as db:
        found = db.execute(
            f"select * from read_parquet('{out}/**/*.parquet') order by {order}"
        ).fetchall()
        names = [column[0] for column in db.description or []]
    return [dict(zip(names, row, strict=True)) for row in found]


def exported(
    tmp_path: Path, lines: list[dict[str, Any] | str], layout: str = PARQUET, **options: Any
) -> tuple[Path, ExportResult]:
    out = tmp_path / "out"
    result = export([write_log(tmp_path / "logs", lines)], out, layout=layout, **options)
    return out, result


def duckdb_types(out: Path) -> dict[str, str]:
    with duckdb.connect() as db:
        described = db.execute(
            f"describe select * from read_parquet('{out}/**/*.parquet', hive_partitioning=false)"
        ).fetchall()
    return {name: kind for name, kind, *_ in described}


# The databricks layout has a `date` column of its own: pyarrow reads the directory name as one.
DAY_PARTITIONING = ds.partitioning(pa.schema([("date", pa.date32())]), flavor="hive")


def test_parquet_layout_has_the_log_columns_with_arrow_types(tmp_path: Path) -> None:
    out, _ = exported(tmp_path, [record()])
    [path] = out.rglob("*.parquet")
    schema = pq.read_schema(path)
    assert schema.names == [
        "schema_version",
        "request_id",
        "client_request_id",
        "timestamp",
        "endpoint",
        "model",
        "variant",
        "model_version",
        "routing",
        "split",
        "user_key_hash",
        "requester",
        "status_code",
        "duration_ms",
        "request",
        "request_encoding",
        "response",
        "error",
        "truncated",
    ]
    assert schema.field("timestamp").type == pa.timestamp("ms", tz="UTC")
    assert schema.field("split").type == pa.map_(pa.string(), pa.int64())
    assert schema.field("status_code").type == pa.int32()
    assert schema.field("duration_ms").type == pa.float64()
    assert schema.field("truncated").type == pa.bool_()


def test_parquet_layout_reads_typed_in_duckdb_and_pandas(tmp_path: Path) -> None:
    out, _ = exported(tmp_path, [record()])
    types = duckdb_types(out)
    assert types["timestamp"] == "TIMESTAMP WITH TIME ZONE"
    assert types["split"] == "MAP(VARCHAR, BIGINT)"
    assert types["status_code"] == "INTEGER"
    assert types["duration_ms"] == "DOUBLE"
    frame = pd.read_parquet(out)
    assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]"
    assert frame["timestamp"][0] == pd.Timestamp(T0)
    assert frame["status_code"].dtype == "int32"
    assert dict(frame["split"][0]) == {"champion": 90, "challenger": 10}
    assert str(frame["date"][0]) == "2026-11-29"


def test_split_is_a_map_that_sql_indexes_by_variant(tmp_path: Path) -> None:
    out, _ = exported(tmp_path, [record()])
    with duckdb.connect() as db:
        query = f"select split['champion'], split['challenger'] from '{out}/**/*.parquet'"
        assert db.execute(query).fetchall() == [(90, 10)]


def test_databricks_layout_has_the_inference_table_columns_and_types(tmp_path: Path) -> None:
    out, _ = exported(tmp_path, [record()], DATABRICKS)
    assert duckdb_types(out) == {
        "databricks_request_id": "VARCHAR",
        "client_request_id": "VARCHAR",
        "date": "DATE",
        "timestamp_ms": "BIGINT",
        "status_code": "INTEGER",
        "sampling_fraction": "DOUBLE",
        "execution_time_ms": "BIGINT",
        "request": "VARCHAR",
        "response": "VARCHAR",
        "request_metadata": "MAP(VARCHAR, VARCHAR)",
    }
    table = pq.read_table(out, partitioning=DAY_PARTITIONING)
    assert table.schema.field("date").type == pa.date32()
    assert table.schema.field("request_metadata").type == pa.map_(pa.string(), pa.string())
    frame = pd.read_parquet(out, partitioning=None)
    assert frame["timestamp_ms"].dtype == "int64"
    assert frame["execution_time_ms"].dtype == "int64"
    assert frame["sampling_fraction"].dtype == "float64"
    assert frame["date"][0] == date(2026, 11, 29)


def test_databricks_layout_maps_the_gateway_fields(tmp_path: Path) -> None:
    fields = record(client_request_id="client-7", duration_ms=41.6)
    out, _ = exported(tmp_path, [fields], DATABRICKS, sampling_fraction=0.25)
    [row] = rows(out, "databricks_request_id")
    assert row["databricks_request_id"] == fields["request_id"]
    assert row["client_request_id"] == "client-7"
    assert row["timestamp_ms"] == epoch_ms(T0)
    assert row["execution_time_ms"] == 42
    assert row["sampling_fraction"] == 0.25
    assert row["request"] == fields["request"]
    assert row["response"] == fields["response"]
    metadata = row["request_metadata"]
    assert metadata["endpoint_name"] == "churn"
    assert metadata["model_name"] == "churn-model"
    assert metadata["model_version"] == "3"
    assert metadata["served_entity_name"] == metadata["variant"] == "champion"
    assert metadata["request_encoding"] == "utf-8"
    assert json.loads(metadata["split"]) == {"champion": 90, "challenger": 10}


def test_a_base64_request_stays_base64_and_the_metadata_says_so(tmp_path: Path) -> None:
    fields = record(request_body=b"PAR1\x00\x01", content_type="application/vnd.apache.parquet")
    out, _ = exported(tmp_path, [fields], DATABRICKS)
    [row] = rows(out, "databricks_request_id")
    assert row["request"] == "UEFSMQAB"
    assert row["request_metadata"]["request_encoding"] == "base64"


def test_a_failed_request_keeps_its_error_in_the_metadata(tmp_path: Path) -> None:
    failed = record(status_code=503, response_body=None, error="no replica", variant=None)
    out, _ = exported(tmp_path, [failed], DATABRICKS)
    [row] = rows(out, "databricks_request_id")
    assert (row["status_code"], row["response"]) == (503, None)
    assert row["request_metadata"]["error"] == "no replica"
    assert "served_entity_name" not in row["request_metadata"]


def test_monitoring_query_counts_requests_and_errors_per_day_and_model_version(
    tmp_path: Path,
) -> None:
    lines: list[dict[str, Any] | str] = [
        record(0, model_version="3"),
        record(10, model_version="3", status_code=500, response_body=None, error="boom"),
        record(20, model_version="4", variant="challenger"),
        record(130, model_version="3"),
        record(140, model_version="4", variant="challenger", status_code=400, error="bad"),
    ]
    out, _ = exported(tmp_path, lines, DATABRICKS)
    query = f"""
        select date,
               request_metadata['model_version'] as model_version,
               count(*) as requests,
               avg(case when status_code >= 400 then 1.0 else 0.0 end) as error_rate
        from read_parquet('{out}/**/*.parquet', hive_partitioning = false)
        group by all order by all
    """
    with duckdb.connect() as db:
        assert db.execute(query).fetchall() == [
            (date(2026, 11, 29), "3", 2, 0.5),
            (date(2026, 11, 29), "4", 1, 0.0),
            (date(2026, 11, 30), "3", 1, 0.0),
            (date(2026, 11, 30), "4", 1, 1.0),
        ]


def test_records_are_partitioned_by_the_utc_date_of_their_timestamp(tmp_path: Path) -> None:
    late = record(0, request_id="late")
    late["timestamp"] = "2026-11-29T23:59:59.999Z"
    early = record(0, request_id="early")
    early["timestamp"] = "2026-11-30T00:00:00.000Z"
    offset = record(0, request_id="offset")
    offset["timestamp"] = "2026-11-30T01:30:00.000+02:00"
    out, result = exported(tmp_path, [late, early, offset])
    assert files(out) == [
        "date=2026-11-29/part-inference-host-1-20261129T220000Z-a.parquet",
        "date=2026-11-30/part-inference-host-1-20261129T220000Z-a.parquet",
    ]
    with duckdb.connect() as db:
        by_day = db.execute(
            f"select date, list(request_id order by request_id) "
            f"from read_parquet('{out}/**/*.parquet') group by date order by date"
        ).fetchall()
    assert by_day == [(date(2026, 11, 29), ["late", "offset"]), (date(2026, 11, 30), ["early"])]
    assert result.partitions == {date(2026, 11, 29): 2, date(2026, 11, 30): 1}


def test_a_log_larger_than_the_chunk_is_written_a_chunk_at_a_time(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [record(minutes / 100) for minutes in range(1000)]
    line_bytes = {len(json.dumps(line)) + 1 for line in lines}
    assert len(line_bytes) == 1
    per_chunk = 40
    out, result = exported(tmp_path, lines, chunk_bytes=per_chunk * line_bytes.pop())
    [path] = out.rglob("*.parquet")
    metadata = pq.ParquetFile(path).metadata
    assert metadata.num_rows == 1000
    assert metadata.num_row_groups == result.row_groups == 1000 // per_chunk
    assert {metadata.row_group(i).num_rows for i in range(metadata.num_row_groups)} == {per_chunk}


def test_a_chunk_that_spans_two_dates_writes_a_row_group_to_each(tmp_path: Path) -> None:
    lines: list[dict[str, Any] | str] = [record(minutes) for minutes in range(110, 130)]
    out, result = exported(tmp_path, lines, chunk_bytes=1)
    assert result.row_groups == 20
    assert result.partitions == {date(2026, 11, 29): 10, date(2026, 11, 30): 10}
    assert sum(pq.ParquetFile(path).num_row_groups for path in out.rglob("*.parquet")) == 20


def test_running_the_same_export_twice_gives_the_same_files(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    paths = [
        write_log(logs, [record(minutes) for minutes in range(0, 180, 7)], "a"),
        write_log(logs, [record(minutes + 1) for minutes in range(0, 180, 11)], "b"),
    ]
    out = tmp_path / "out"
    window = Window(epoch_ms(T0 + timedelta(minutes=30)), epoch_ms(T0 + timedelta(minutes=150)))
    first = export(paths, out, layout=PARQUET, window=window)
    contents = {name: (out / name).read_bytes() for name in files(out)}
    second = export(paths, out, layout=PARQUET, window=window)
    assert first == second
    assert {name: (out / name).read_bytes() for name in files(out)} == contents
    assert len(rows(out)) == sum(first.partitions.values()) == 17 + 11


@pytest.mark.parametrize("layout", [PARQUET, DATABRICKS])
def test_an_overlapping_later_window_neither_duplicates_nor_drops_records(
    tmp_path: Path, layout: str
) -> None:
    path = write_log(tmp_path / "logs", [record(minutes) for minutes in range(0, 240, 5)])
    out = tmp_path / "out"

    def since(minutes: int) -> int:
        return epoch_ms(T0 + timedelta(minutes=minutes))

    export([path], out, layout=layout, window=Window(None, since(100)))
    export([path], out, layout=layout, window=Window(since(60), since(180)))
    export([path], out, layout=layout, window=Window(since(170), None))
    id_column = "request_id" if layout == PARQUET else "databricks_request_id"
    ids = [row[id_column] for row in rows(out, id_column)]
    assert ids == [record(minutes)["request_id"] for minutes in range(0, 240, 5)]


def test_a_window_keeps_records_from_since_up_to_but_not_including_until(
    tmp_path: Path,
) -> None:
    lines: list[dict[str, Any] | str] = [record(minutes) for minutes in range(10)]
    window = Window(epoch_ms(T0 + timedelta(minutes=3)), epoch_ms(T0 + timedelta(minutes=7)))
    out, result = exported(tmp_path, lines, window=window)
    assert [row["request_id"] for row in rows(out)] == [
        record(minutes)["request_id"] for minutes in range(3, 7)
    ]
    assert sum(result.partitions.values()) == 4


def test_version_1_records_are_exported_with_nulls_for_the_later_fields(
    tmp_path: Path,
) -> None:
    out, result = exported(tmp_path, [v1(record(0)), record(1, client_request_id="c")])
    old, new = rows(out)
    assert (old["schema_version"], old["client_request_id"], old["split"], old["requester"]) == (
        1,
        None,
        None,
        None,
    )
    assert (new["schema_version"], new["client_request_id"], new["requester"]) == (
        2,
        "c",
        "batch-job",
    )
    assert result.malformed == 0


@pytest.mark.parametrize(
    "bad",
    [
        "{not json",
        "[1, 2]",
        json.dumps({**record(0), "timestamp": "yesterday"}),
        json.dumps({**record(0), "status_code": "200"}),
        json.dumps({**record(0), "duration_ms": None}),
        json.dumps({**record(0), "split": {"champion": "ninety"}}),
        json.dumps(v1({**record(0), "endpoint": None})),
        "[" * 100_000,
    ],
)
def test_a_malformed_line_is_counted_and_the_others_are_exported(tmp_path: Path, bad: str) -> None:
    out, result = exported(tmp_path, [record(0), bad, "", record(1)])
    assert len(rows(out)) == 2
    assert result.malformed == 1
    assert result.first_malformed == "inference-host-1-20261129T220000Z-a.jsonl:2"


def command(tmp_path: Path, *args: str) -> tuple[int, str, str]:
    stdout, stderr = io.StringIO(), io.StringIO()
    options: dict[str, Any] = {
        "since": None,
        "until": None,
        "layout": PARQUET,
        "sampling_fraction": 1.0,
    }
    for option in args:
        name, _, value = option.partition("=")
        options[name] = float(value) if name == "sampling_fraction" else value
    directory = Path(options.pop("dir", tmp_path / "logs"))
    out = Path(options.pop("out", tmp_path / "out"))
    code = run(directory, out, stdout=stdout, stderr=stderr, now=NOW, **options)
    return code, stdout.getvalue(), stderr.getvalue()


def test_the_command_prints_records_per_partition_and_warns_of_malformed_lines(
    tmp_path: Path,
) -> None:
    write_log(tmp_path / "logs", [record(0), record(130), "oops", record(140)])
    code, out, err = command(tmp_path)
    assert code == 0
    assert out.splitlines() == [
        f"{tmp_path / 'out' / 'date=2026-11-29'}  1 record(s)",
        f"{tmp_path / 'out' / 'date=2026-11-30'}  2 record(s)",
        "exported 3 record(s) into 2 partition(s); 1 malformed line(s) skipped",
    ]
    assert err == (
        "warning: 1 malformed line(s) skipped, "
        "the first at inference-host-1-20261129T220000Z-a.jsonl:3\n"
    )


def test_the_command_takes_durations_back_from_now(tmp_path: Path) -> None:
    write_log(tmp_path / "logs", [record(0), record(90), record(130)])
    code, out, _ = command(tmp_path, "since=25h", "until=2026-11-30T00:00:00Z")
    assert code == 0
    assert out.splitlines()[-1].startswith("exported 1 record(s) into 1 partition(s)")


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("dir=missing",), 2, "error: missing is not a directory"),
        (("since=last week",), 2, "error: --since: expected an ISO 8601 time"),
        (("until=soon",), 2, "error: --until: expected an ISO 8601 time"),
        (("since=1h", "until=2h"), 2, "error: --since 1h is not before --until 2h"),
        (("sampling_fraction=0",), 2, "error: --format must be one of parquet, databricks"),
        (("layout=csv",), 2, "error: --format must be one of parquet, databricks"),
    ],
)
def test_bad_arguments_exit_2_with_one_line_on_stderr(
    tmp_path: Path, args: tuple[str, ...], code: int, message: str
) -> None:
    write_log(tmp_path / "logs", [record(0)])
    returned, out, err = command(tmp_path, *args)
    assert (returned, out) == (code, "")
    assert err.startswith(message)
    assert err.count("\n") == 1


def test_an_unwritable_out_exits_1_with_one_line_on_stderr(tmp_path: Path) -> None:
    write_log(tmp_path / "logs", [record(0)])
    (tmp_path / "file").write_text("", encoding="utf-8")
    returned, out, err = command(tmp_path, f"out={tmp_path / 'file' / 'out'}")
    assert (returned, out) == (1, "")
    assert err.startswith("error: cannot use ")
    assert err.count("\n") == 1


def test_an_out_of_the_other_layout_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    write_log(tmp_path / "logs", [record(0)])
    assert command(tmp_path)[0] == 0
    (tmp_path / "logs" / "inference-host-1-20261129T220000Z-a.jsonl").rename(
        tmp_path / "logs" / "inference-host-2-20261129T220000Z-b.jsonl"
    )
    before = {name: (tmp_path / "out" / name).read_bytes() for name in files(tmp_path / "out")}
    returned, _, err = command(tmp_path, "layout=databricks")
    assert returned == 1
    assert "holds another layout" in err
    assert err.count("\n") == 1
    assert {name: (tmp_path / "out" / name).read_bytes() for name in files(tmp_path / "out")} == (
        before
    )
