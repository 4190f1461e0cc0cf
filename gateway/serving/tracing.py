"""What an outcome becomes as a trace: its spans, built after the fact from the measured instants.

Nothing of tracing runs while a request is served: the pipeline keeps `perf_counter` instants as
plain floats. Once the outcome is known, `Tracer.trace` settles the trace id (the caller's, from
its `traceparent`, or a new one) for the outcome and its inference-log records, and defers the
spans: they are planned with explicit times (`gateway.core.spans`) and handed to the exporter
after the answer has been sent. No span object or context crosses a thread.
"""

import asyncio
import dataclasses
import logging
from collections.abc import Callable, Sequence

from gateway.core.spans import (
    Attributes,
    EpochClock,
    PartFacts,
    SpanPlan,
    invocation_route,
    plan_children,
)
from gateway.observe.quiet import QuietLog
from gateway.observe.tracing import Begun, SpanEmitter
from gateway.serving.outcome import Outcome

logger = logging.getLogger(__name__)
_QUIET = QuietLog(logger)


def _after_this_turn(work: Callable[[], None]) -> None:
    # The request's task sends its answer before it next yields: this runs after the send.
    asyncio.get_running_loop().call_soon(work)


class Tracer:
    """Turns outcomes into spans and exports them; one per serving process, on its event loop."""

    def __init__(
        self, emitter: SpanEmitter, defer: Callable[[Callable[[], None]], None] = _after_this_turn
    ) -> None:
        self._emitter = emitter
        self._defer = defer

    def trace(self, outcome: Outcome) -> Outcome:
        """The outcome with its trace id; its spans are emitted once the answer is sent."""
        try:
            begun = self._emitter.begin(outcome.invocation.headers)
            self._defer(lambda: self._emit(begun, outcome))
        except Exception as exc:  # a tracing bug must never cost a request its answer or record
            self._failed(exc)
            return outcome
        attempt = outcome.attempt  # a failed attempt that fell back: the same trace
        if attempt is not None:
            attempt = dataclasses.replace(attempt, trace_id=begun.hex)
        return dataclasses.replace(outcome, trace_id=begun.hex, attempt=attempt)

    def close(self) -> None:
        """Export what is still queued and stop (blocking: call off the loop)."""
        self._emitter.shutdown()

    def _emit(self, begun: Begun, outcome: Outcome) -> None:
        try:
            invocation = outcome.invocation
            clock = EpochClock(invocation.wall, invocation.started)
            ended = invocation.started + outcome.duration
            route = invocation_route(invocation.endpoint, invocation.path)
            request = SpanPlan(
                f"POST {route}",
                clock.ns(invocation.started),
                clock.ns(ended),
                request_attributes(outcome, route),
                None if outcome.error is None else outcome.error.message,
            )

            def children() -> Sequence[SpanPlan]:
                received = invocation.received
                if received is None:  # refused before its body was read: nothing ran
                    return ()
                parts = [
                    PartFacts(p.variant, p.model_version, p.rows, p.stages) for p in outcome.parts
                ]
                return plan_children(
                    clock, received=received, ended=ended, request=request, parts=parts
                )

            self._emitter.emit(begun, request, children)
        except Exception as exc:
            self._failed(exc)

    @staticmethod
    def _failed(exc: Exception) -> None:
        _QUIET.warning(("trace", type(exc).__name__), "tracing failed: %r", exc)
        logger.debug("tracing failed", exc_info=exc)


def request_attributes(outcome: Outcome, route: str) -> Attributes:
    """The request span's attributes: HTTP semantic conventions, and `gateway.*` for ours."""
    invocation = outcome.invocation
    attributes: dict[str, str | int | float | bool] = {
        "http.request.method": "POST",
        "http.route": route,
        "url.path": invocation.path,
        "http.response.status_code": outcome.status_code,
        "gateway.request_id": invocation.request_id,
    }
    if outcome.endpoint is not None:
        attributes["gateway.endpoint"] = outcome.endpoint.name
    if outcome.decision is not None:
        attributes["gateway.routing"] = outcome.decision.routing.value
    if outcome.parts:
        attributes["gateway.variant"] = ",".join(part.variant for part in outcome.parts)
        attributes["gateway.model_version"] = ",".join(p.model_version for p in outcome.parts)
        attributes["gateway.rows"] = sum(part.rows for part in outcome.parts)
    if outcome.error is not None:
        attributes["error.type"] = outcome.error.error_code
    return attributes
