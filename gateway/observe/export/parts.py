"""One output file of an export, rewritten whole: old rows outside the window kept, new rows added.

The file is written under a temporary name beside it (a dot name, which DuckDB's `*.parquet` globs
and pyarrow datasets skip) and renamed over the old one, so a reader sees the old file or the new
one, never half of one, and an interrupted export leaves the old file as it was.
"""

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gateway.observe.export.columns import TIME_COLUMN, schema_of

logger = logging.getLogger(__name__)


class ExportError(Exception):
    """The export cannot go on: an output file cannot be written or holds another layout."""


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


# Picks rows of an old output file by their time column.
_Selector = Callable[[pa.ChunkedArray], pa.ChunkedArray]


def open_part(path: Path, schema: pa.Schema) -> pq.ParquetFile:
    """An output file of an earlier export; raises ExportError unless it has `schema`."""
    try:
        part = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as exc:
        raise ExportError(f"cannot read {path}: {exc}") from exc
    if not part.schema_arrow.equals(schema):
        part.close()
        raise ExportError(
            f"{path} holds another layout than this export's; export into another directory"
        )
    return part


class PartFile:
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
        return open_part(self._target, self._schema) if self._target.exists() else None

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

    def _close_old(self) -> None:
        old, self._old = self._old, None
        if old is not None:
            old.close()

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
        self._close_old()
        assert self._writer is not None
        try:
            self._writer.close()
            self._writer = None
            os.replace(self._temporary, self._target)
        except OSError as exc:
            self._temporary.unlink(missing_ok=True)
            raise ExportError(f"cannot write {self._target}: {exc}") from exc
        logger.debug("export: wrote %s", self._target)

    def abort(self) -> None:
        """Drop the temporary file of a rewrite that did not finish; nothing after `finish`."""
        self._close_old()
        if self._writer is None:
            return
        try:
            self._writer.close()
        finally:
            self._writer = None
            self._temporary.unlink(missing_ok=True)


def _scalar(milliseconds: int, kind: pa.DataType) -> pa.Scalar:
    return pa.scalar(milliseconds, type=pa.int64()).cast(kind)
