"""A stand-in OpenTelemetry collector: accepts OTLP/HTTP exports on 127.0.0.1 and drops them.

Row (d) exports its spans here, so that its figures include the export (encoding and sending the
batches) without measuring a real collector's speed; the sink only counts what it was sent.
"""

import contextlib
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TRACES_PATH = "/v1/traces"


class Sink(ThreadingHTTPServer):
    """An HTTP server that answers every POST with an empty OTLP success, counting the bytes."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.exports = 0
        self.bytes = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        """The traces URL a gateway's `tracing.endpoint` names."""
        return f"http://127.0.0.1:{self.server_address[1]}{TRACES_PATH}"

    def count(self, size: int) -> None:
        """One export of `size` bytes received."""
        with self._lock:
            self.exports += 1
            self.bytes += size


class _Handler(BaseHTTPRequestHandler):
    server: Sink

    def do_POST(self) -> None:
        size = int(self.headers.get("content-length") or 0)
        self.rfile.read(size)
        self.server.count(size)
        # An empty ExportTraceServiceResponse is zero bytes of protobuf.
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: one export every few milliseconds under load."""


@contextlib.contextmanager
def running_sink() -> Iterator[Sink]:
    """A sink serving from a thread until the block ends."""
    sink = Sink()
    thread = threading.Thread(target=sink.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        sink.shutdown()
        sink.server_close()
