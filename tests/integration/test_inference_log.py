"""The inference-log writer with real files and threads, and the files read by pandas and DuckDB."""

import errno
import io
import json
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import IO, Any

import pandas as pd
import pytest

from gateway.core.record import user_key_hash
from gateway.observe.log_writer import InferenceLogWriter
from tests import helpers
from tests.helpers import documented_record_fields, read_records
from tests.integration.conftest import wait_until

DEADLINE = 5.0
START = datetime(2024, 5, 1, 12, 34, 56, tzinfo=UTC).timestamp()
STAMP = "20240501T123456Z"


class FakeClock:
    """Seconds since the epoch that move only when a test moves them."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class GatedFile(io.TextIOWrapper):
    """A real file whose writes wait until the test opens the gate: a disk that stalls."""

    def __init__(self, path: Path, gate: threading.Event, entered: threading.Event) -> None:
        super().__init__(path.open("xb"), encoding="utf-8", newline="\n")
        self.gate = gate
        self.entered = entered

    def write(self, text: str) -> int:
        self.entered.set()
        if not self.gate.wait(DEADLINE):
            raise TimeoutError("the test never opened the gate")
        return super().write(text)


class FlakyFile(io.TextIOWrapper):
    """A real file whose writes fail with ENOSPC while `disk_full` is set."""

    def __init__(self, path: Path, disk_full: threading.Event) -> None:
        super().__init__(path.open("xb"), encoding="utf-8", newline="\n")
        self.disk_full = disk_full

    def write(self, text: str) -> int:
        if self.disk_full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(text)


FIELDS_IN_ORDER = documented_record_fields()
# A record (tests.helpers.record) written at the writer's clock's start.
make_record = partial(helpers.record, timestamp=START)


@pytest.fixture
def writers() -> Iterator[list[InferenceLogWriter]]:
    """Writers a test made; each is closed at the end even when the test fails."""
    made: list[InferenceLogWriter] = []
    yield made
    for writer in made:
        writer.close(timeout=DEADLINE)


def started(
    writers: list[InferenceLogWriter], directory: Path, **options: Any
) -> InferenceLogWriter:
    writer = InferenceLogWriter(directory, **options)
    writers.append(writer)
    writer.start()
    return writer


def log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.jsonl"))


def request_ids(path: Path) -> list[str]:
    return [json.loads(line)["request_id"] for line in path.read_text("utf-8").splitlines()]


def all_request_ids(directory: Path) -> list[str]:
    return [request_id for path in log_files(directory) for request_id in request_ids(path)]


def file_sequence(path: Path) -> int:
    """The sequence number of a log file, checking that the name follows the documented scheme."""
    pattern = rf"inference-[A-Za-z0-9._-]+-{os.getpid()}-\d{{8}}T\d{{6}}Z-(\d{{4}})\.jsonl"
    match = re.fullmatch(pattern, path.name)
    assert match, f"{path.name} does not follow the naming scheme"
    return int(match[1])


def test_every_record_from_four_threads_is_written_exactly_once(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    writer = started(writers, tmp_path)
    batches = [[make_record(f"t{thread}-{i}") for i in range(1250)] for thread in range(4)]
    barrier = threading.Barrier(4)
    accepted: list[bool] = []

    def submit_all(records: list[dict[str, Any]]) -> None:
        barrier.wait(DEADLINE)
        accepted.extend([writer.submit(record) for record in records])

    threads = [threading.Thread(target=submit_all, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    writer.close()

    assert accepted.count(True) == 5000
    assert (writer.written, writer.dropped, writer.queue_depth()) == (5000, 0, 0)
    lines = [
        json.loads(line)
        for path in log_files(tmp_path)
        for line in path.read_text("utf-8").splitlines()
    ]
    assert all(list(line) == FIELDS_IN_ORDER for line in lines)
    counts = Counter(line["request_id"] for line in lines)
    assert counts == Counter({f"t{t}-{i}": 1 for t in range(4) for i in range(1250)})


def test_size_rotation_starts_new_files_named_by_the_scheme(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    writer = started(writers, tmp_path, rotate_bytes=2048, clock=FakeClock())
    for i in range(100):
        assert writer.submit(make_record(f"r{i}"))
    writer.close()

    files = log_files(tmp_path)
    assert len(files) > 5
    assert [file_sequence(path) for path in files] == list(range(1, len(files) + 1))
    assert all(STAMP in path.name for path in files)
    assert all(path.stat().st_size <= 2048 for path in files)
    assert all_request_ids(tmp_path) == [f"r{i}" for i in range(100)]


def test_a_record_larger_than_rotate_bytes_gets_a_file_of_its_own(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    writer = started(writers, tmp_path, rotate_bytes=1024)
    big = make_record("big", request_body=b'{"inputs": "' + b"x" * 2000 + b'"}')
    for record in (make_record("before"), big, make_record("after")):
        writer.submit(record)
    writer.close()

    assert [request_ids(path) for path in log_files(tmp_path)] == [["before"], ["big"], ["after"]]


def test_time_rotation_starts_a_new_file_once_the_current_one_is_old(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    clock = FakeClock()
    writer = started(writers, tmp_path, rotate_seconds=60, clock=clock)
    writer.submit(make_record("first"))
    wait_until(lambda: writer.written == 1, "the first record", DEADLINE)
    clock.now += 59
    writer.submit(make_record("same file"))
    wait_until(lambda: writer.written == 2, "the second record", DEADLINE)
    clock.now += 1
    writer.submit(make_record("new file"))
    writer.close()

    files = log_files(tmp_path)
    assert [file_sequence(path) for path in files] == [1, 2]
    assert all(STAMP in path.name for path in files)
    assert [request_ids(path) for path in files] == [["first", "same file"], ["new file"]]


def test_full_queue_drops_without_blocking_and_counts_every_drop(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    gate, entered = threading.Event(), threading.Event()
    drops: list[tuple[str, int]] = []
    writer = started(
        writers,
        tmp_path,
        max_queue=10,
        on_drop=lambda reason, count: drops.append((reason, count)),
        opener=lambda path: GatedFile(path, gate, entered),
    )
    writer.submit(make_record("in the writer"))
    assert entered.wait(DEADLINE), "the writer never reached the file"
    results: list[bool] = []
    # Submitting from another thread lets the test fail, instead of hanging, if submit blocks.
    submitter = threading.Thread(
        target=lambda: results.extend(writer.submit(make_record(f"r{i}")) for i in range(100))
    )
    submitter.start()
    submitter.join(DEADLINE)
    assert not submitter.is_alive(), "submit blocked on a stalled writer"
    assert not gate.is_set()

    assert results == [True] * 10 + [False] * 90
    assert writer.dropped == 90
    assert drops == [("queue_full", 1)] * 90
    assert writer.queue_depth() == 10

    gate.set()
    writer.close()
    assert all_request_ids(tmp_path) == ["in the writer"] + [f"r{i}" for i in range(10)]
    assert (writer.written, writer.dropped) == (11, 90)


def test_drop_warnings_are_rate_limited_and_count_the_drops_between_them(
    tmp_path: Path, writers: list[InferenceLogWriter], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.observe.log_writer")
    clock = FakeClock()
    gate, entered = threading.Event(), threading.Event()
    writer = started(
        writers,
        tmp_path,
        max_queue=1,
        clock=clock,
        opener=lambda path: GatedFile(path, gate, entered),
    )
    writer.submit(make_record("in the writer"))
    assert entered.wait(DEADLINE)
    assert writer.submit(make_record("queued"))
    for i in range(5):
        assert not writer.submit(make_record(f"dropped {i}"))
    clock.now += 9.9
    writer.submit(make_record("dropped 5"))
    clock.now += 0.1
    writer.submit(make_record("dropped 6"))
    gate.set()
    writer.close()

    warnings = [record.getMessage() for record in caplog.records]
    assert len(warnings) == 2
    assert "dropped 1 record(s) (queue_full)" in warnings[0]
    assert "dropped 6 record(s) (queue_full); 7 dropped since the start" in warnings[1]


def test_a_failed_open_drops_the_batch_and_later_records_are_written(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    opened: list[Path] = []

    def full_disk_once(path: Path) -> IO[str]:
        opened.append(path)
        if len(opened) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return path.open("x", encoding="utf-8")

    drops: list[tuple[str, int]] = []
    writer = started(
        writers,
        tmp_path,
        opener=full_disk_once,
        on_drop=lambda reason, count: drops.append((reason, count)),
    )
    writer.submit(make_record("lost"))
    wait_until(lambda: writer.dropped == 1, "the write error to be counted", DEADLINE)
    writer.submit(make_record("kept 1"))
    writer.submit(make_record("kept 2"))
    writer.close()

    assert drops == [("write_error", 1)]
    assert all_request_ids(tmp_path) == ["kept 1", "kept 2"]
    assert (writer.written, writer.dropped) == (2, 1)
    assert [file_sequence(path) for path in log_files(tmp_path)] == [2]


def test_a_failed_write_closes_the_file_and_later_records_go_to_a_new_one(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    disk_full = threading.Event()
    writer = started(writers, tmp_path, opener=lambda path: FlakyFile(path, disk_full))
    writer.submit(make_record("before"))
    wait_until(lambda: writer.written == 1, "the first record", DEADLINE)
    disk_full.set()
    writer.submit(make_record("lost"))
    wait_until(lambda: writer.dropped == 1, "the write error to be counted", DEADLINE)
    disk_full.clear()
    writer.submit(make_record("after"))
    writer.close()

    files = log_files(tmp_path)
    assert [file_sequence(path) for path in files] == [1, 2]
    assert [request_ids(path) for path in files] == [["before"], ["after"]]


def dropped(writer: InferenceLogWriter, count: int) -> Callable[[], bool]:
    """Whether `writer` has dropped `count` records."""
    return lambda: writer.dropped == count


def test_a_disk_that_stays_full_leaves_no_empty_files_behind(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    disk_full = threading.Event()
    disk_full.set()
    opened: list[Path] = []

    def full_disk(path: Path) -> IO[str]:
        opened.append(path)
        return FlakyFile(path, disk_full)

    drops: list[tuple[str, int]] = []
    writer = started(
        writers,
        tmp_path,
        opener=full_disk,
        retry_seconds=0.2,
        on_drop=lambda reason, count: drops.append((reason, count)),
    )
    for n in range(1, 4):
        writer.submit(make_record(f"lost {n}"))
        wait_until(dropped(writer, n), f"failed batch {n} to be counted", DEADLINE)
        assert len(list(tmp_path.iterdir())) <= 1
    disk_full.clear()
    writer.submit(make_record("after"))
    writer.close()

    assert drops == [("write_error", 1)] * 3
    assert len(opened) == 4  # one attempt a failed batch, none between them
    assert all(path.stat().st_size > 0 for path in tmp_path.iterdir())
    assert all_request_ids(tmp_path) == ["after"]


def test_a_burst_of_batches_after_a_write_error_waits_for_one_retry(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    disk_full = threading.Event()
    disk_full.set()
    opened: list[Path] = []

    def full_disk(path: Path) -> IO[str]:
        opened.append(path)
        return FlakyFile(path, disk_full)

    writer = started(writers, tmp_path, opener=full_disk, retry_seconds=2.0, linger_seconds=0)
    writer.submit(make_record("lost"))
    wait_until(lambda: writer.dropped == 1, "the write error to be counted", DEADLINE)
    for n in range(20):
        writer.submit(make_record(f"waiting {n}"))
    wait_until(lambda: writer.queue_depth() <= 19, "the writer to take the next batch", DEADLINE)

    assert len(opened) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_writer_reports_its_queue_depth_after_writing(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    depths: list[int] = []
    writer = started(writers, tmp_path, on_depth=depths.append)
    for n in range(50):
        writer.submit(make_record(f"r{n}"))
    wait_until(lambda: writer.written == 50, "every record", DEADLINE)
    wait_until(lambda: bool(depths) and depths[-1] == 0, "a depth of 0 to be reported", DEADLINE)


def test_the_writer_survives_a_record_that_cannot_be_encoded(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    drops: list[tuple[str, int]] = []
    writer = started(writers, tmp_path, on_drop=lambda reason, count: drops.append((reason, count)))
    circular = make_record("circular")
    circular["self"] = circular
    writer.submit(make_record("before"))
    writer.submit(circular)
    writer.submit(make_record("after"))
    writer.close()

    assert drops == [("write_error", 1)]
    assert all_request_ids(tmp_path) == ["before", "after"]


def test_records_that_orjson_refuses_are_written_and_read_back_the_same(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    # What a body of {"inputs": "\\ud800"} leaves when an error quotes the decoded value.
    drops: list[tuple[str, int]] = []
    writer = started(writers, tmp_path, on_drop=lambda reason, count: drops.append((reason, count)))
    writer.submit(make_record("surrogate", error="Invalid input: '\ud800'"))
    # orjson refuses both of these; they are written by the standard library instead.
    writer.submit({**make_record("huge"), "duration_ms": 2**70})
    writer.close()

    assert drops == []
    surrogate, huge = read_records(tmp_path)
    assert surrogate["error"] == "Invalid input: '\ud800'"
    assert huge["duration_ms"] == 2**70


def test_a_removed_directory_is_made_again_for_the_next_file(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    directory = tmp_path / "logs" / "inference"
    writer = started(writers, directory, rotate_bytes=1)
    writer.submit(make_record("first"))
    wait_until(lambda: writer.written == 1, "the first record", DEADLINE)
    for path in log_files(directory):
        path.unlink()
    directory.rmdir()
    writer.submit(make_record("second"))
    writer.close()

    assert all_request_ids(directory) == ["second"]


def test_two_writers_started_in_the_same_second_never_share_a_file(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    first = started(writers, tmp_path, clock=FakeClock())
    second = started(writers, tmp_path, clock=FakeClock())
    first.submit(make_record("from first"))
    wait_until(lambda: first.written == 1, "the first writer", DEADLINE)
    second.submit(make_record("from second"))
    first.close()
    second.close()

    assert [request_ids(path) for path in log_files(tmp_path)] == [["from first"], ["from second"]]


def test_close_is_idempotent_and_refuses_later_records(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    drops: list[tuple[str, int]] = []
    writer = started(writers, tmp_path, on_drop=lambda reason, count: drops.append((reason, count)))
    writer.submit(make_record("kept"))
    writer.close()
    writer.close()

    assert not writer.submit(make_record("too late"))
    assert (writer.written, writer.dropped, drops) == (1, 0, [])
    assert all_request_ids(tmp_path) == ["kept"]


def test_a_writer_accepts_nothing_before_start(tmp_path: Path) -> None:
    writer = InferenceLogWriter(tmp_path / "logs")
    assert not writer.submit(make_record("early"))
    writer.close()
    assert not (tmp_path / "logs").exists()


def test_start_makes_the_directory_with_its_parents(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    started(writers, tmp_path / "a" / "b", file_prefix="shadow")
    assert (tmp_path / "a" / "b").is_dir()


def test_file_prefix_names_the_files(tmp_path: Path, writers: list[InferenceLogWriter]) -> None:
    writer = started(writers, tmp_path, file_prefix="audit", clock=FakeClock())
    writer.submit(make_record("r"))
    writer.close()
    [path] = log_files(tmp_path)
    assert path.name.startswith("audit-")
    assert path.name.endswith(f"-{os.getpid()}-{STAMP}-0001.jsonl")


def write_mixed_log(directory: Path, writers: list[InferenceLogWriter]) -> None:
    writer = started(writers, directory, rotate_bytes=1500)
    records = [
        make_record("ok", user_key_hash=user_key_hash("alice", b"secret"), routing="sticky"),
        make_record("bad", status_code=400, response_body=None, error="bad input"),
        make_record(
            "parquet", request_body=b"PAR1\x00\x01", content_type="application/vnd.apache.parquet"
        ),
        make_record("shadow", variant="candidate", routing="shadow", model_version="3"),
        make_record("cut", max_payload_bytes=8, timestamp=START + 1.5),
    ]
    for record in records:
        assert writer.submit(record)
    writer.close()


def test_the_files_load_with_pandas_read_json(
    tmp_path: Path, writers: list[InferenceLogWriter]
) -> None:
    write_mixed_log(tmp_path, writers)
    frames = [pd.read_json(path, lines=True) for path in log_files(tmp_path)]
    assert len(frames) > 1
    frame = pd.concat(frames, ignore_index=True)

    assert list(frame.columns) == FIELDS_IN_ORDER
    assert list(frame["request_id"]) == ["ok", "bad", "parquet", "shadow", "cut"]
    assert list(frame["status_code"]) == [200, 400, 200, 200, 200]
    assert list(frame["request_encoding"]) == ["utf-8", "utf-8", "base64", "utf-8", "utf-8"]
    assert list(frame["truncated"]) == [False, False, False, False, True]
    assert frame["duration_ms"].tolist() == [4.5] * 5
    assert frame["error"].tolist()[1] == "bad input"


def test_the_files_query_with_duckdb(tmp_path: Path, writers: list[InferenceLogWriter]) -> None:
    duckdb = pytest.importorskip("duckdb")
    write_mixed_log(tmp_path, writers)
    with duckdb.connect() as connection:
        relation = connection.read_json(str(log_files(tmp_path)[0]))
        assert relation.columns == FIELDS_IN_ORDER
        rows = connection.execute(
            "SELECT variant, routing, count(*), count(*) FILTER (WHERE status_code >= 400),"
            " epoch_ms(max(timestamp)), any_value(typeof(timestamp))"
            " FROM read_json_auto(?) GROUP BY ALL ORDER BY variant, routing",
            [str(tmp_path / "*.jsonl")],
        ).fetchall()

    assert rows == [
        ("candidate", "shadow", 1, 0, START * 1000, "TIMESTAMP WITH TIME ZONE"),
        ("champion", "random", 3, 1, (START + 1.5) * 1000, "TIMESTAMP WITH TIME ZONE"),
        ("champion", "sticky", 1, 0, START * 1000, "TIMESTAMP WITH TIME ZONE"),
    ]
