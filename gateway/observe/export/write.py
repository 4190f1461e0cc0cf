"""`gateway logs export`: inference logs to Parquet files partitioned by date, in bounded memory.

Each source file is read a line at a time; parsed records gather until their lines reach
`chunk_bytes`, then each date's share of them is written as one row group. Memory therefore
follows the chunk size, never the size of the log.

Every (date, source file) pair is one file, `OUT/date=YYYY-MM-DD/part-{source stem}.parquet`. A run
writes it under a temporary name and renames it over the old one; in it, the rows inside the run's
window come from the source, and the rows of the old file outside the window are kept. So a rerun
gives the same files, and an overlapping later window neither duplicates nor drops a record.
"""

from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Final, TextIO

from gateway.observe.export.columns import (
    FORMATS,
    LogRecord,
    epoch_ms,
    parse_line,
    schema_of,
    to_batch,
)
from gateway.observe.export.parts import ExportError, PartFile, Window, open_part
from gateway.observe.log_summary import files_in, parse_since

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
CHUNK_BYTES: Final = 16 * 1024 * 1024
EVERYTHING: Final = Window()


@dataclass
class ExportResult:
    """What an export wrote: records per partition date, malformed lines, row groups written."""

    partitions: Counter[date] = field(default_factory=Counter)
    malformed: int = 0
    first_malformed: str | None = None
    row_groups: int = 0


def export(
    paths: Iterable[Path],
    out: Path,
    *,
    layout: str,
    window: Window = EVERYTHING,
    sampling_fraction: float = 1.0,
    chunk_bytes: int = CHUNK_BYTES,
) -> ExportResult:
    """Write the window's records of the files under `out`, one file per date and source file."""
    result = ExportResult()
    # One layout per directory: a query over `**/*.parquet` must find one schema.
    earlier = next(out.glob("date=*/part-*.parquet"), None)
    if earlier is not None:
        open_part(earlier, schema_of(layout)).close()
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
    parts: dict[date, PartFile] = {}
    try:
        for records in _chunks(path, window, chunk_bytes, result):
            by_day: dict[date, list[LogRecord]] = {}
            for record in records:
                by_day.setdefault(record.day, []).append(record)
            for day, day_records in by_day.items():
                if day not in parts:
                    target = out / f"date={day.isoformat()}" / f"part-{path.stem}.parquet"
                    parts[day] = PartFile(target, layout, window)
                parts[day].write(to_batch(day_records, layout, sampling_fraction=sampling_fraction))
                result.partitions[day] += len(day_records)
                result.row_groups += 1
        for part in parts.values():
            part.finish()
    finally:
        for part in parts.values():
            part.abort()


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
