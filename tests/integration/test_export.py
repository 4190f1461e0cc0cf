"""`gateway logs export` over files the real writer rotated, through the command line."""

import json
import subprocess
import sys
import tracemalloc
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from gateway.commands.cli import main
from gateway.core.record import build_record
from gateway.observe.export.columns import DATABRICKS, PARQUET
from gateway.observe.export.write import export
from gateway.observe.log_writer import InferenceLogWriter

# 23:00 UTC: the records of the first hour fall on one date, the rest on the next.
START = datetime(2026, 11, 29, 23, 0, tzinfo=UTC)


def record(index: int, *, variant: str = "champion", status_code: int = 200) -> dict[str, Any]:
    failed = status_code >= 400
    return build_record(
        request_id=f"req-{index:05d}",
        timestamp=(START + timedelta(minutes=index)).timestamp(),
        endpoint="churn",
        model="churn-model",
        variant=variant,
        model_version="7" if variant == "champion" else "8",
        routing="random",
        split={"champion": 80, "challenger": 20},
        user_key_hash=None,
        requester=None,
        client_request_id=None,
        status_code=status_code,
        duration_ms=3.25,
        request_body=b'{"dataframe_records": [{"tenure_months": 3}]}',
        content_type="application/json",
        response_body=None if failed else b'{"predictions": [1]}',
        error="model failed" if failed else None,
        max_payload_bytes=64 * 1024,
    )


def write_rotated_log(directory: Path, count: int) -> list[dict[str, Any]]:
    """`count` records, one minute apart, written by the gateway's writer into several files."""
    records = [
        record(
            index,
            variant="challenger" if index % 5 == 0 else "champion",
            status_code=500 if index % 7 == 0 else 200,
        )
        for index in range(count)
    ]
    writer = InferenceLogWriter(
        directory, rotate_bytes=16 * 1024, linger_seconds=0, clock=START.timestamp
    )
    writer.start()
    try:
        for fields in records:
            assert writer.submit(fields)
    finally:
        writer.close()
    return records


def test_a_rotated_log_exports_once_per_record_and_answers_a_monitoring_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, out = tmp_path / "logs", tmp_path / "out"
    write_rotated_log(logs, 150)
    sources = sorted(logs.glob("*.jsonl"))
    assert len(sources) > 2
    args = ["logs", "export", "--dir", str(logs), "--out", str(out), "--format", DATABRICKS]

    assert main([*args, "--sampling-fraction", "0.5"]) == 0
    first = capsys.readouterr()
    assert main([*args, "--sampling-fraction", "0.5"]) == 0
    second = capsys.readouterr()

    assert first == second
    assert first.err == ""
    assert first.out.splitlines()[-1] == (
        "exported 150 record(s) into 2 partition(s); 0 malformed line(s) skipped"
    )
    with duckdb.connect() as db:
        daily = db.execute(
            f"""
            select date, request_metadata['model_version'] as model_version,
                   count(*) as requests,
                   count(*) filter (where status_code >= 400) as errors,
                   any_value(sampling_fraction) as sampling_fraction
            from read_parquet('{out}/**/*.parquet', hive_partitioning = false)
            group by all order by all
            """
        ).fetchall()
    expected = []
    for day, indexes in ((date(2026, 11, 29), range(60)), (date(2026, 11, 30), range(60, 150))):
        for version, chosen in (("7", [i for i in indexes if i % 5]), ("8", indexes[::5])):
            errors = sum(1 for i in chosen if i % 7 == 0)
            expected.append((day, version, len(chosen), errors, 0.5))
    assert daily == expected


def test_a_window_from_the_command_line_exports_only_its_records(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logs, out = tmp_path / "logs", tmp_path / "out"
    write_rotated_log(logs, 150)
    since, until = START + timedelta(minutes=50), START + timedelta(minutes=70)
    code = main(
        [
            "logs",
            "export",
            *("--dir", str(logs), "--out", str(out)),
            *("--since", since.isoformat(), "--until", until.isoformat()),
        ]
    )
    assert code == 0
    assert capsys.readouterr().out.splitlines()[-1].startswith("exported 20 record(s)")
    with duckdb.connect() as db:
        found = db.execute(
            f"select min(request_id), max(request_id), count(*) from '{out}/**/*.parquet'"
        ).fetchall()
    assert found == [("req-00050", "req-00069", 20)]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--dir", "{tmp}/missing", "--out", "{tmp}/out"], 2, "is not a directory"),
        (["--dir", "{tmp}/logs", "--out", "{tmp}/out", "--since", "tuesday"], 2, "--since:"),
        (["--dir", "{tmp}/logs", "--out", "{tmp}/file/out"], 1, "error: cannot use "),
    ],
)
def test_the_command_fails_with_one_line_and_no_traceback(
    tmp_path: Path, args: list[str], code: int, message: str
) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "a.jsonl").write_text(json.dumps(record(0)) + "\n", encoding="utf-8")
    (tmp_path / "file").write_text("", encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "logs", "export"]
        + [arg.format(tmp=tmp_path) for arg in args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stdout) == (code, "")
    assert message in result.stderr
    assert len(result.stderr.splitlines()) == 1


def test_memory_follows_the_chunk_size_not_the_size_of_the_log(tmp_path: Path) -> None:
    template = json.dumps(record(0))
    lines = [template.replace("req-00000", f"req-{index:05d}") for index in range(10_000)]
    path = tmp_path / "logs" / "big.jsonl"
    path.parent.mkdir()
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log_bytes = path.stat().st_size
    assert log_bytes > 4 * 1024 * 1024

    # The first export imports and sets up what pyarrow needs once: not memory of this log's.
    small = tmp_path / "small.jsonl"
    small.write_text(lines[0] + "\n", encoding="utf-8")
    export([small], tmp_path / "warm-up", layout=PARQUET)
    tracemalloc.start()
    try:
        result = export([path], tmp_path / "out", layout=PARQUET, chunk_bytes=128 * 1024)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert sum(result.partitions.values()) == 10_000
    assert result.row_groups == -(-log_bytes // (128 * 1024))
    assert peak < log_bytes / 4, peak
