"""Reading an invocation's body within its limits: bytes (413), time (408) and the worker's budget.

A body is held whole while it is parsed and predicted, and parsing makes it up to ~16 times
larger, so a worker bounds the bytes of the bodies it holds at once (`max_in_flight_bytes`): past
that budget a request gets 503 with Retry-After instead of adding to the worker's memory. A body
with a Content-Length reserves its size before a byte is read; a chunked one reserves each chunk
as it arrives.
"""

import asyncio
from collections.abc import Mapping

from starlette.types import Receive

from gateway.core.config import GatewayConfig
from gateway.core.errors import GatewayError, too_many_body_bytes


class ClientGoneError(Exception):
    """The client disconnected before its request body was read."""


class BodyBudget:
    """The bytes of request bodies a worker holds at once; lives on the event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def reserve(self, size: int) -> None:
        """Hold `size` more bytes, or refuse with 503 when the worker holds too much already."""
        if self.held + size > self.limit:
            raise too_many_body_bytes(self.limit)
        self.held += size

    def release(self, size: int) -> None:
        """Give back bytes held by a request that is answered."""
        self.held -= size


class BodyReader:
    """Reads request bodies under the config's limits, against one worker's budget."""

    def __init__(self, config: GatewayConfig) -> None:
        self.max_bytes = config.max_request_bytes
        self.timeout = config.body_timeout_seconds
        self.budget = BodyBudget(config.max_in_flight_bytes)

    async def read(self, receive: Receive, headers: Mapping[str, str]) -> bytes:
        """The whole body; its bytes stay reserved until `release(len(body))`.

        413 past `max_request_bytes`, 408 past `body_timeout_seconds`, 503 past the budget.
        """
        declared = headers.get("content-length", "")
        expected = int(declared) if declared.isdigit() else 0
        if expected > self.max_bytes:
            raise self._too_large()
        self.budget.reserve(expected)
        hold = _Hold(self.budget, expected)
        try:
            body = await self._read(receive, hold)
        except BaseException:
            self.budget.release(hold.size)
            raise
        self.budget.release(hold.size - len(body))  # a body shorter than it said
        return body

    def release(self, size: int) -> None:
        """The request whose body had `size` bytes is answered."""
        self.budget.release(size)

    async def _read(self, receive: Receive, hold: "_Hold") -> bytes:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        first: bytes = message.get("body", b"")
        self._account(len(first), hold)
        if not message.get("more_body", False):  # the usual case: the body came in one message
            return first
        try:
            async with asyncio.timeout(self.timeout):
                return await self._rest(receive, first, hold)
        except TimeoutError:
            raise GatewayError(
                "REQUEST_TIMEOUT", f"The request's body took over {self.timeout:g} s to arrive."
            ) from None

    async def _rest(self, receive: Receive, first: bytes, hold: "_Hold") -> bytes:
        chunks, size, more = [first], len(first), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise ClientGoneError
            chunk = message.get("body", b"")
            size += len(chunk)
            self._account(size, hold)
            chunks.append(chunk)
            more = message.get("more_body", False)
        return b"".join(chunks)

    def _account(self, size: int, hold: "_Hold") -> None:
        if size > self.max_bytes:
            raise self._too_large()
        hold.grow_to(size)

    def _too_large(self) -> GatewayError:
        return GatewayError(
            "PAYLOAD_TOO_LARGE", f"The request body is larger than {self.max_bytes} bytes."
        )


class _Hold:
    """The bytes of the budget one body holds: its declared length, grown as more arrives."""

    __slots__ = ("_budget", "size")

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def grow_to(self, size: int) -> None:
        if size > self.size:
            self._budget.reserve(size - self.size)
            self.size = size
