"""The HTTP/1.1 connection: uvicorn's httptools protocol with the limits a hostile client meets.

Before a request reaches the app, its header section is bounded here: in bytes
(`max_header_bytes`, counted as they arrive, before the parser buffers them), in fields
(`max_headers`), and in time (`header_timeout_seconds`, from a connection's or a request's first
byte to the end of its headers, which also ends a connection that never sends anything). Past a
limit the client gets 431 or 408 with a JSON error body and the connection is closed: such a
request has no endpoint yet, so it is counted as `_unknown` and leaves no inference record.
Limits on the body (its size, rows and read time) belong to the app, where the request is known.

One refusal is made here for speed: an invocation whose headers arrive while its worker already
answers `max_in_flight` others gets its 503 (with `Retry-After`) from the connection, its body
skipped as it arrives, without an ASGI task, a body read or an inference record. Under a flood
of callers that ignore `Retry-After`, refusals are most of the work; were each as costly as a
served request, the worker would spend itself refusing, and the requests it does serve would
wait behind the refusals.
"""

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway.core.config import GatewayConfig
from gateway.core.errors import GatewayError, ShedError
from gateway.http.invocations import INVOCATIONS, request_id
from gateway.observe import metrics
from gateway.observe.quiet import QuietLog
from gateway.serving.accounting import NONE, UNKNOWN

_QUIET = QuietLog(logging.getLogger("uvicorn.error"))
_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}
# A body this large is not skipped by the connection: the app reads (and limits) it, then sheds.
SKIP_BODY_MAX = 1024 * 1024
# Decides whether an invocation arriving now (its endpoint's name, None for `/invocations`) is
# shed at once: the refusal, counted already, or None.
Shedder = Callable[[str | None], ShedError | None]


class _RefusedError(Exception):
    """Raised in a parser callback to refuse the request being parsed."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class GatewayHTTPProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol with TCP_NODELAY and bounded header sections."""

    max_header_bytes = 64 * 1024
    max_headers = 100
    header_timeout = 20.0
    count = True
    shed_on_arrival: Shedder | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes received since the current request's header section began; None: reading a body.
        self._head_bytes: int | None = 0
        self._fields = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = 0.0
        # The last bytes of the header section so far: its end may straddle two reads.
        self._tail = b""
        # The answer to a request shed on arrival, sent once its body has been skipped.
        self._shed: bytes | None = None

    def connection_made(self, transport: Any) -> None:
        """Turn off Nagle's algorithm, and give the first request its time to arrive.

        A listening socket handed to uvicorn (as every worker gets one) leaves Nagle's algorithm
        on, so keep-alive responses would wait for the client's delayed ACK (~40 ms on Linux).
        """
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)
        self._start_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the header timer with the connection."""
        self._stop_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Count a header section's bytes before the parser holds them; refuse past the limit."""
        if self._head_bytes is not None:
            before = self._head_bytes
            self._head_bytes += len(data)
            if self._head_bytes > self.max_header_bytes and not self._head_ends(data, before):
                limit = self.max_header_bytes
                self._refuse(_too_large(f"The request's headers exceed {limit} bytes."))
                return
            self._tail = data[-3:]
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, _RefusedError):
                self._refuse(exc.__context__.error)
            else:
                self._invalid()
        except httptools.HttpParserError:
            self._invalid()
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        else:
            # Only a header section left incomplete by this read is timed: headers that arrive
            # whole, as nearly all do, cost no timer.
            if self._head_bytes and self._head_timer is None:
                self._start_head_timer()

    def _head_ends(self, data: bytes, before: int) -> bool:
        """Whether the header section ends in `data` within the limit (a body may follow it)."""
        end = (self._tail + data).find(b"\r\n\r\n")
        return end != -1 and before - len(self._tail) + end + 4 <= self.max_header_bytes

    def on_message_begin(self) -> None:
        """A request starts: its header fields are counted from here."""
        self._fields = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count the fields; one too many refuses the request."""
        self._fields += 1
        if self._fields > self.max_headers:
            raise _RefusedError(
                _too_large(f"The request has more than {self.max_headers} headers.")
            )
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """The header section is whole: the body is the app's to limit, unless shed at once."""
        self._head_bytes = None
        if self.shed_on_arrival is not None and self._shed_now(self.shed_on_arrival):
            if self._head_timer is None:  # the header timer bounds the skipping of the body too
                self._start_head_timer()
            return
        self._stop_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        """A shed request's body is skipped; any other goes to the app."""
        if self._shed is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        """What arrives next belongs to the next request's header section."""
        self._head_bytes = 0
        self._tail = b""
        if self._shed is None:
            super().on_message_complete()
            return
        answer, self._shed = self._shed, None
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        keep_alive = self.parser.should_keep_alive()
        self.transport.write(answer if keep_alive else answer.replace(b"\r\n\r\n", _CLOSING, 1))
        if keep_alive:
            self.on_response_complete()  # uvicorn's keep-alive timer, then the next request
        else:
            self.transport.close()

    def _shed_now(self, shed: Shedder) -> bool:
        """Whether this request is an invocation to shed now; if so, its answer is made ready.

        Only a request that is next to be answered (no response of this connection still owed
        before it) with a body of a known, small size is shed here; the app sheds the others.
        """
        if self.cycle is not None and not self.cycle.response_complete:
            return False
        if self.parser.get_method() != b"POST" or self.expect_100_continue:
            return False
        found = INVOCATIONS.fullmatch(self.url.partition(b"?")[0].decode("latin-1"))
        if found is None:
            return False
        given = _skippable(self.headers)
        if given is None:
            return False
        error = shed(found["name"])
        if error is None:
            return False
        _QUIET.warning(
            "shed", "refusing requests on arrival: %s", error.message.removesuffix(" Retry later.")
        )
        body = json.dumps(error.to_dict()).encode()
        self._shed = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: %d\r\nx-request-id: %s\r\ncontent-length: %d\r\n\r\n%s"
            % (error.retry_after, request_id(given).encode("latin-1"), len(body), body)
        )
        return True

    def _invalid(self) -> None:
        # As uvicorn answers a request it cannot parse, with one log line per interval at most.
        msg = "Invalid HTTP request received."
        _QUIET.warning("invalid", msg)
        self.send_400_response(msg)

    def _start_head_timer(self) -> None:
        self._head_started = self.loop.time()
        self._head_timer = self.loop.call_later(self.header_timeout, self._head_timed_out)

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is slow while the one before it is served: close after it.
            self.cycle.keep_alive = False
            return
        seconds = f"{self.header_timeout:g}"
        self._refuse(
            GatewayError("REQUEST_TIMEOUT", f"The request's headers took over {seconds} s.")
        )

    def _refuse(self, error: GatewayError) -> None:
        """Answer `error` and close the connection; the request never reaches the app."""
        self._stop_head_timer()
        if self.transport.is_closing():
            return
        if self.count:
            meters = metrics.request_meters(UNKNOWN, NONE, NONE, error.status_code)
            meters.answered()
            meters.duration(self.loop.time() - self._head_started)
        body = json.dumps(error.to_dict()).encode()
        status = error.status_code
        self.transport.write(
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(body), body)
        )
        self.transport.close()


_CLOSING = b"\r\nconnection: close\r\n\r\n"


def _skippable(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request id (or "") of a request whose body the connection may skip, else None.

    That is a body of one Content-Length of at most SKIP_BODY_MAX bytes, not chunked; a
    repeated or malformed length is left to the app. The request id is the first one given.
    """
    given: str | None = None
    length: int | None = None
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit():
                return None
            length = int(value)
        elif name == b"transfer-encoding":
            return None
        elif name == b"x-request-id" and given is None:
            given = value.decode("latin-1")
    if length is None or length > SKIP_BODY_MAX:
        return None
    return given or ""


def _too_large(message: str) -> GatewayError:
    return GatewayError("REQUEST_HEADER_FIELDS_TOO_LARGE", message)


def protocol_for(
    config: GatewayConfig, shed_on_arrival: Shedder | None = None
) -> type[GatewayHTTPProtocol]:
    """The connection protocol with the config's header limits, shedding with `shed_on_arrival`."""
    return type(
        "ConfiguredHTTPProtocol",
        (GatewayHTTPProtocol,),
        {
            "max_header_bytes": config.max_header_bytes,
            "max_headers": config.max_headers,
            "header_timeout": config.header_timeout_seconds,
            "count": config.metrics.enabled,
            "shed_on_arrival": shed_on_arrival,
        },
    )
