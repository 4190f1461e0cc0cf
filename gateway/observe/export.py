"""`gateway logs export`: inference logs to Parquet files partitioned by date, in bounded memory.

Each source file is read a line at a time; parsed records gather until their lines reach
`chunk_bytes`, then each date's share of them is written as one row group. Memory therefore
follows the chunk size, never the size of the log.

Every (date, source file) pair is one file, `OUT/date=YYYY-MM-DD/part-{source stem}.parquet`. A run
writes it under a temporary name and renames it over the old one; in it, the rows inside the run's
window come from the source, and the rows of the old file outside the window are kept. So a rerun
gives the same files, and an overlapping later window neither duplicates nor drops a record.
"""

import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Final, TextIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.observe.export_columns import (
    FORMATS,
    TIME_COLUMN,
    LogRecord,
    epoch_ms,
    parse_line,
    schema_of,
    to_batch,
)
from gateway.observe.log_summary import files_in, parse_since

logger = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHUNK_BYTES: Final = 16 * 1024 * 1024

# Picks rows of an old output file by their time column.
_Selector = Callable[[pa.ChunkedArray], pa.ChunkedArray]


class ExportError(Exception):
    """The export cannot go on: an output file cannot be written or holds another layout."""


@dataclass
class ExportResult:
    """What an export wrote: records per partition date, malformed lines, row groups written."""

    partitions: Counter[date] = field(default_factory=Counter)
    malformed: int = 0
    first_malformed: str | None = None
    row_groups: int = 0


@dataclass(frozen=True)
class Window:
    """Records with `since <= timestamp < until`, as epoch milliseconds; None leaves a side open."""

    since_ms: int | None = None
    until_ms: int | None = None

    @property
    def empty(self) -> bool:
        """Whether no time is inside the window."""
        since, until = self.since_ms, self.until_ms
        return since is not None and until is not None and since >= until

    def holds(self, timestamp_ms: int) -> bool:
        """Whether a timestamp is inside the window."""
        return (self.since_ms is None or self.since_ms <= timestamp_ms) and (
            self.until_ms is None or timestamp_ms < self.until_ms
        )


def export(
    paths: Iterable[Path],
    out: Path,
    *,
    layout: str,
    window: Window = Window(),
    sampling_fraction: float = 1.0,
    chunk_bytes: int = CHUNK_BYTES,
) -> ExportResult:
    """Write the window's records of the files under `out`, one file per date and source file."""
    result = ExportResult()
    for path in paths:
        _export_file(path, out, layout, window, sampling_fraction, chunk_bytes, result)
    return result


def _chunks(
    path: Path, window: Window, chunk_bytes: int, result: ExportResult
) -> Iterator[list[LogRecord]]:
    """The window's records of a file, in lists whose lines add up to about `chunk_bytes`."""
    records: list[LogRecord] = []
    size = 0
    with path.open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            size += len(line)
            if line.strip():
                try:
                    record = parse_line(line)
                except (ValueError, TypeError, OverflowError):
                    result.malformed += 1
                    result.first_malformed = result.first_malformed or f"{path.name}:{number}"
                else:
                    if window.holds(record.timestamp_ms):
                        records.append(record)
            if size >= chunk_bytes:
                yield records
                records, size = [], 0
    if records:
        yield records


def _export_file(
    path: Path,
    out: Path,
    layout: str,
    window: Window,
    sampling_fraction: float,
    chunk_bytes: int,
    result: ExportResult,
) -> None:
    parts: dict[date, _PartFile] = {}
    try:
        for records in _chunks(path, window, chunk_bytes, result):
            by_day: dict[date, list[LogRecord]] = {}
            for record in records:
                by_day.setdefault(record.day, []).append(record)
            for day, day_records in by_day.items():
                if day not in parts:
                    target = out / f"date={day.isoformat()}" / f"part-{path.stem}.parquet"
                    parts[day] = _PartFile(target, layout, window)
                parts[day].write(to_batch(day_records, layout, sampling_fraction=sampling_fraction))
                result.partitions[day] += len(day_records)
                result.row_groups += 1
        for part in parts.values():
            part.finish()
    finally:
        for part in parts.values():
            part.abort()


class _PartFile:
    """One output file being rewritten: old rows before the window, new rows, old rows after it."""

    def __init__(self, target: Path, layout: str, window: Window) -> None:
        self._target = target
        self._temporary = target.with_name(f".{target.name}.tmp")
        self._schema = schema_of(layout)
        self._time = TIME_COLUMN[layout]
        self._window = window
        self._old = self._open_old()
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            self._writer: pq.ParquetWriter | None = pq.ParquetWriter(self._temporary, self._schema)
        except OSError as exc:
            raise ExportError(f"cannot write {self._temporary}: {exc}") from exc
        since = window.since_ms
        if since is not None:
            try:
                self._keep_old(lambda times: pc.less(times, _scalar(since, times.type)))
            except BaseException:
                self.abort()
                raise

    def _open_old(self) -> pq.ParquetFile | None:
        if not self._target.exists():
            return None
        try:
            old = pq.ParquetFile(self._target)
        except (OSError, pa.ArrowException) as exc:
            raise ExportError(f"cannot read {self._target}: {exc}") from exc
        if not old.schema_arrow.equals(self._schema):
            raise ExportError(
                f"{self._target} holds another layout than this export's; export into another directory"
            )
        return old

    def _keep_old(self, select: _Selector) -> None:
        """Copy the old file's rows that `select` picks by time, a row group at a time."""
        if self._old is None or self._writer is None:
            return
        for index in range(self._old.num_row_groups):
            try:
                group = self._old.read_row_group(index)
            except (OSError, pa.ArrowException) as exc:
                raise ExportError(f"cannot read {self._target}: {exc}") from exc
            kept = group.filter(select(group.column(self._time)))
            if kept.num_rows:
                self._writer.write_table(kept)

    def write(self, batch: pa.RecordBatch) -> None:
        """Add one row group of new rows."""
        assert self._writer is not None
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise ExportError(f"cannot write {self._temporary}: {exc}") from exc

    def finish(self) -> None:
        """Copy the old rows after the window, then put the file in the old one's place."""
        until = self._window.until_ms
        if until is not None:
            self._keep_old(lambda times: pc.greater_equal(times, _scalar(until, times.type)))
        assert self._writer is not None
        try:
            self._writer.close()
            self._writer = None
            os.replace(self._temporary, self._target)
        except OSError as exc:
            raise ExportError(f"cannot write {self._target}: {exc}") from exc

    def abort(self) -> None:
        """Drop the temporary file of a rewrite that did not finish; nothing after `finish`."""
        if self._writer is None:
            return
        try:
            self._writer.close()
        finally:
            self._writer = None
            self._temporary.unlink(missing_ok=True)


def _scalar(milliseconds: int, kind: pa.DataType) -> pa.Scalar:
    return pa.scalar(milliseconds, type=pa.int64()).cast(kind)


def render(result: ExportResult, out: Path) -> str:
    """One line per partition written, then the total."""
    lines = [
        f"{out / f'date={day.isoformat()}'}  {count} record(s)"
        for day, count in sorted(result.partitions.items())
    ]
    total = sum(result.partitions.values())
    lines.append(
        f"exported {total} record(s) into {len(result.partitions)} partition(s); "
        f"{result.malformed} malformed line(s) skipped"
    )
    return "\n".join(lines) + "\n"


def run(
    directory: Path,
    out: Path,
    *,
    since: str | None,
    until: str | None,
    layout: str,
    sampling_fraction: float,
    stdout: TextIO,
    stderr: TextIO,
    now: datetime,
) -> int:
    """The command: export the directory's logs under `out`; problems go to `stderr`."""
    if not directory.is_dir():
        print(f"error: {directory} is not a directory", file=stderr)
        return EXIT_USAGE
    if layout not in FORMATS or not 0.0 < sampling_fraction <= 1.0:
        print(
            f"error: --format must be one of {', '.join(FORMATS)} and --sampling-fraction "
            f"in (0, 1], got {layout!r} and {sampling_fraction}",
            file=stderr,
        )
        return EXIT_USAGE
    try:
        window = Window(
            None if since is None else epoch_ms(parse_since(since, now)),
            None if until is None else epoch_ms(_parse_until(until, now)),
        )
    except ValueError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_USAGE
    if window.empty:
        print(f"error: --since {since} is not before --until {until}", file=stderr)
        return EXIT_USAGE
    try:
        out.mkdir(parents=True, exist_ok=True)
        result = export(
            files_in(directory),
            out,
            layout=layout,
            window=window,
            sampling_fraction=sampling_fraction,
        )
    except ExportError as exc:
        print(f"error: {exc}", file=stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: cannot use {exc.filename or out}: {exc.strerror or exc}", file=stderr)
        return EXIT_FAILED
    if result.malformed:
        print(
            f"warning: {result.malformed} malformed line(s) skipped, "
            f"the first at {result.first_malformed}",
            file=stderr,
        )
    stdout.write(render(result, out))
    return EXIT_OK


def _parse_until(text: str, now: datetime) -> datetime:
    try:
        return parse_since(text, now)
    except ValueError as exc:
        raise ValueError(str(exc).replace("--since", "--until", 1)) from None
