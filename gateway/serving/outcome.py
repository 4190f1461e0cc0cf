"""The values one invocation passes through: the request as received, the routing decision, the outcome.

An `Outcome` says everything that happened to a request: the answer's body or the error (as a
value, never as JSON to be parsed back), and the part each variant had in it. The HTTP edge turns
it into a response; accounting turns it into metrics and inference-log records, exactly once.
"""

from collections.abc import Mapping
from dataclasses import dataclass

from gateway.core.config import Endpoint
from gateway.core.errors import GatewayError
from gateway.core.routing import Routing
from gateway.serving.prediction import Part


@dataclass(frozen=True)
class Invocation:
    """One invocation as the service receives it."""

    request_id: str
    endpoint: str | None  # None: the first endpoint (plain `/invocations`)
    body: bytes
    content_type: str | None
    headers: Mapping[str, str]  # lower-case names
    wall: float  # arrival, seconds since the epoch
    started: float  # arrival, perf_counter
    requester: str | None = None  # the name of the caller's bearer token; None without auth
    path: str = "/invocations"  # the request's path, for the trace's route
    received: float | None = None  # the body read, perf_counter; None: refused before reading it


@dataclass(frozen=True)
class Decision:
    """Which variant serves a request, and why; no variant when each row is routed on its own."""

    variant: str | None
    routing: Routing
    split: Mapping[str, int]  # the endpoint's live weights at the decision
    user_key: str | None = None


@dataclass(frozen=True)
class Outcome:
    """What happened to an invocation: its answer or its error, and who served which rows."""

    invocation: Invocation
    endpoint: Endpoint | None
    decision: Decision | None
    parts: tuple[Part, ...]
    body: bytes | None
    error: GatewayError | None
    duration: float
    # The variant's failed attempt, when the endpoint's fallback variant answered instead.
    attempt: "Outcome | None" = None
    trace_id: str | None = None  # 32 hex digits when tracing is on

    @property
    def status_code(self) -> int:
        """The HTTP status the caller gets."""
        return 200 if self.error is None else self.error.status_code
