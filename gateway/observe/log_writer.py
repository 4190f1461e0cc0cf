"""The inference-log writer: records queued without blocking, written as rotated JSON Lines by a thread.

The log is data, not logging: records never go through the `logging` module. The request path
calls `submit`, which never blocks; one background thread, waking at most every 50 ms under
load, writes batches to
`{directory}/{prefix}-{hostname}-{pid}-{start}-{sequence}.jsonl`, where `prefix` defaults to
`inference`, `start` is the writer's UTC start time as `%Y%m%dT%H%M%SZ` and `sequence` is a
four-digit counter from `0001`, raised for every new file. A new file is started when the current
one would pass `rotate_bytes` (a single larger record gets a file of its own) or, before a batch,
when it is `rotate_seconds` old; and after a write error. Host, pid, start time and sequence keep
every worker and replica on files of its own, and a name that exists already is never reused, so
no file is ever written by two writers. A gap in the sequence marks a file that could not be
created, or one removed because a write error left it empty. Readers take `*.jsonl` of the
directory.

After a write error (a full disk, a directory gone) the failed batch is dropped and counted, and
the next file is tried no sooner than `retry_seconds` later; records queue meanwhile (and past
`max_queue` are dropped and counted as `queue_full`), so a disk that stays full costs one attempt
a second, not one empty file a batch.

The thread is a daemon so that a writer nobody closed never holds up the interpreter's exit;
`close()` is what makes a graceful stop lossless, and it is also registered with `atexit`.
"""

import atexit
import contextlib
import io
import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Final

import orjson

logger = logging.getLogger(__name__)

DROP_QUEUE_FULL: Final = "queue_full"
DROP_WRITE_ERROR: Final = "write_error"

Record = dict[str, Any] | Callable[[], dict[str, Any]]

_BATCH_SIZE: Final = 512
# After its first record, the writer lets more gather this long before it writes: one wake-up of
# its thread per interval under load instead of one per request (~40 us of CPU each, measured on
# 2 cores), at the price of records reaching the file up to this much later.
_LINGER_SECONDS: Final = 0.05
_WARNING_INTERVAL_SECONDS: Final = 10.0
_RETRY_SECONDS: Final = 1.0
# An idle writer reports its queue depth this often, so the gauge reads 0 once all is written.
_IDLE_REPORT_SECONDS: Final = 1.0


def _open_new(path: Path) -> IO[str]:
    # "x": fail rather than append to a file that another writer made.
    return open(path, "x", encoding="utf-8", newline="\n")


def _json_line(record: dict[str, Any]) -> tuple[str, int]:
    """A record as one line of compact JSON, UTF-8 as is, and its size in bytes.

    orjson encodes a record in ~1 us where the standard library takes ~10 us, on the writer's
    thread, which shares the GIL with the request path. It refuses what UTF-8 cannot hold (a
    lone surrogate: a body's "\\ud800" decoded, quoted back in an error) and integers past 64
    bits: those records are written escaped by the standard library, which JSON reads back to
    the same values.
    """
    try:
        data = orjson.dumps(record, default=str)
    except orjson.JSONEncodeError:
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str) + "\n"
        return line, len(line)
    return data.decode("utf-8") + "\n", len(data) + 1


class InferenceLogWriter:
    """A bounded queue of records and the one thread that writes them to rotated JSON Lines files."""

    def __init__(
        self,
        directory: Path,
        *,
        max_queue: int = 10_000,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_seconds: float = 3600.0,
        clock: Callable[[], float] = time.time,
        on_drop: Callable[[str, int], None] | None = None,
        file_prefix: str | None = None,
        opener: Callable[[Path], IO[str]] | None = None,
        linger_seconds: float = _LINGER_SECONDS,
        retry_seconds: float = _RETRY_SECONDS,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        if max_queue < 1:
            raise ValueError(f"max_queue: must be at least 1, got {max_queue}")
        self._directory = directory
        self._max_queue = max_queue
        # Bounded by `submit`, under the lock; the stop marker always finds room.
        self._queue: queue.SimpleQueue[Record | None] = queue.SimpleQueue()
        self._linger = linger_seconds
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._clock = clock
        self._on_drop = on_drop
        self._prefix = file_prefix or "inference"
        self._opener = opener or _open_new
        self._retry_seconds = retry_seconds
        self._on_depth = on_depth
        self._lock = threading.Lock()
        self._accepting = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self._dropped = 0
        self._written = 0
        self._unreported: dict[str, int] = {}
        self._last_warning: dict[str, float] = {}
        # Owned by the writer thread.
        self._stem = ""
        self._sequence = 0
        self._handle: IO[str] | None = None
        self._path: Path | None = None
        self._retry_at = 0.0  # time.monotonic() before which no new file is opened
        self._file_bytes = 0
        self._opened_at = 0.0

    @property
    def dropped(self) -> int:
        """Records lost since the start: queue full or write errors."""
        return self._dropped

    @property
    def written(self) -> int:
        """Records handed to the operating system."""
        return self._written

    def queue_depth(self) -> int:
        """Records waiting to be written."""
        return self._queue.qsize()

    def start(self) -> None:
        """Create the directory and start the writer thread."""
        if self._thread is not None or self._closed:
            raise RuntimeError("an inference-log writer starts once, and not after close()")
        self._directory.mkdir(parents=True, exist_ok=True)
        started = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock()))
        host = re.sub(r"[^A-Za-z0-9._-]+", "_", socket.gethostname()) or "host"
        self._stem = f"{self._prefix}-{host}-{os.getpid()}-{started}"
        self._thread = threading.Thread(target=self._run, name="gateway-inference-log", daemon=True)
        with self._lock:
            self._accepting = True
        self._thread.start()
        atexit.register(self.close)

    def submit(self, record: Record) -> bool:
        """Queue a record without blocking; False if it was dropped or the writer is not running.

        A record may be a callable that builds it: it is then called on the writer's thread, so
        that decoding and cutting bodies costs the request path nothing.
        """
        with self._lock:
            if not self._accepting:
                return False
            if self._queue.qsize() < self._max_queue:
                self._queue.put(record)
                return True
        self._drop(DROP_QUEUE_FULL, 1)
        return False

    def close(self, timeout: float = 10.0) -> None:
        """Stop accepting, write everything queued, fsync and close the file; idempotent."""
        with self._lock:
            first = not self._closed
            self._closed = True
            self._accepting = False
        if self._thread is None:
            return
        if first:
            atexit.unregister(self.close)
            self._queue.put(None)
        self._thread.join(timeout)
        if self._thread.is_alive():
            logger.warning(
                "inference log: the writer did not finish within %.1f s; %d record(s) still queued",
                timeout,
                self.queue_depth(),
            )

    def _drop(self, reason: str, count: int, cause: object = None) -> None:
        """Count lost records, tell `on_drop`, and warn at most once per interval per reason."""
        now = self._clock()
        with self._lock:
            self._dropped += count
            total = self._dropped
            unreported = self._unreported.get(reason, 0) + count
            last = self._last_warning.get(reason)
            due = last is None or now - last >= _WARNING_INTERVAL_SECONDS
            self._unreported[reason] = 0 if due else unreported
            if due:
                self._last_warning[reason] = now
        if due:
            logger.warning(
                "inference log: dropped %d record(s) (%s%s); %d dropped since the start",
                unreported,
                reason,
                "" if cause is None else f": {cause}",
                total,
            )
        if self._on_drop is not None:
            self._on_drop(reason, count)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch, stopping = self._take_batch()
            try:
                self._write_batch(batch)
            except Exception:  # the last guard: the thread must outlive any one batch
                logger.exception("inference log: a batch of %d record(s) failed", len(batch))
            self._report_depth()
        try:
            self._finish_file()
        except OSError as exc:
            logger.warning("inference log: could not flush and close the last file: %s", exc)

    def _take_batch(self) -> tuple[list[Record], bool]:
        """Wait for one record, then take what else is queued, up to a batch; True at the end."""
        while True:
            try:
                first = self._queue.get(timeout=_IDLE_REPORT_SECONDS)
                break
            except queue.Empty:
                self._report_depth()
        if first is None:
            return [], True
        if self._linger > 0 and self._queue.qsize() < _BATCH_SIZE - 1:
            time.sleep(self._linger)
        batch = [first]
        while len(batch) < _BATCH_SIZE:
            try:
                record = self._queue.get_nowait()
            except queue.Empty:
                break
            if record is None:
                return batch, True
            batch.append(record)
        return batch, False

    def _write_batch(self, batch: list[Record]) -> None:
        lines: list[tuple[str, int]] = []
        for item in batch:
            try:
                record = item() if callable(item) else item
                lines.append(_json_line(record))
            except Exception as exc:  # one record that cannot be encoded must not cost the others
                self._drop(DROP_WRITE_ERROR, 1, exc)
        written_before = self._written
        try:
            self._write_lines(lines)
        except Exception as exc:  # disk full, directory gone, a broken opener: drop and go on
            self._abandon_file()
            self._retry_at = time.monotonic() + self._retry_seconds
            self._drop(DROP_WRITE_ERROR, len(lines) - (self._written - written_before), exc)

    def _write_lines(self, lines: list[tuple[str, int]]) -> None:
        if not lines:
            return
        if self._handle is not None and self._clock() - self._opened_at >= self._rotate_seconds:
            self._finish_file()
        unflushed: list[str] = []
        for line, size in lines:
            # A file always takes its first line, so one larger record gets a file of its own.
            full = self._file_bytes > 0 and self._file_bytes + size > self._rotate_bytes
            if self._handle is not None and full:
                self._handle.write("".join(unflushed))
                self._finish_file()
                self._written += len(unflushed)
                unflushed = []
            if self._handle is None:
                self._open_next()
            self._file_bytes += size
            unflushed.append(line)
        if self._handle is not None:
            # One write of the batch's lines: per line, text I/O costs the GIL far more.
            self._handle.write("".join(unflushed))
            self._handle.flush()
        self._written += len(unflushed)

    def _report_depth(self) -> None:
        if self._on_depth is not None:
            try:
                self._on_depth(self._queue.qsize())
            except Exception:  # a broken callback must not stop the writer
                logger.exception("inference log: reporting the queue depth failed")

    def _open_next(self) -> IO[str]:
        wait = self._retry_at - time.monotonic()
        if wait > 0:
            # After a write error: one attempt per interval, not one (empty) file per batch.
            time.sleep(wait)
        self._directory.mkdir(parents=True, exist_ok=True)
        while True:
            self._sequence += 1
            path = self._directory / f"{self._stem}-{self._sequence:04d}.jsonl"
            try:
                handle = self._opener(path)
            except FileExistsError:
                continue
            self._handle, self._file_bytes, self._opened_at = handle, 0, self._clock()
            self._path = path
            return handle

    def _finish_file(self) -> None:
        """Flush, fsync and close the current file; raises OSError if that fails."""
        handle, self._handle = self._handle, None
        self._path = None
        if handle is None:
            return
        try:
            handle.flush()
            with contextlib.suppress(io.UnsupportedOperation):
                os.fsync(handle.fileno())
        finally:
            handle.close()

    def _abandon_file(self) -> None:
        """Close a file that failed, and remove it if it holds nothing; the next batch starts a new one."""
        handle, self._handle = self._handle, None
        path, self._path = self._path, None
        if handle is not None:
            with contextlib.suppress(Exception):
                handle.close()
        if path is not None:
            with contextlib.suppress(OSError):
                if path.stat().st_size == 0:
                    path.unlink()
