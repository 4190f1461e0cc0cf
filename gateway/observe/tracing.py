"""OpenTelemetry for one process: the sampler, the OTLP/HTTP exporter, and span emission.

Spans arrive as plans (`gateway.core.spans`) once an invocation's outcome is known, with the
start and end times its pipeline measured. They are finished facts, so they are handed to the
SDK's BatchSpanProcessor as finished spans (`ReadableSpan`) rather than replayed through its
`Tracer`, whose live spans (a lock, attribute limits, a sampler call and a context each) cost
the event loop ~10 times more for the same export. The processor exports them from a thread of
its own, so the event loop never waits on the collector. The provider is the gateway's own,
never the global one (MLflow has tracing of its own); OpenTelemetry is imported only when
tracing is on.

Settings left unset in the config fall back to the SDK's `OTEL_*` variables (endpoint, headers,
timeout, sampler, batch sizes, resource attributes), then to the SDK's defaults; the service name
falls back to `DEFAULT_SERVICE_NAME`.
"""

import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.core.config import DEFAULT_SERVICE_NAME, Tracing
from gateway.core.spans import SpanPlan

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator


class Begun(NamedTuple):
    """A request's trace, known before its spans are made: its id and the caller's context."""

    trace_id: int
    parent: "Context"

    @property
    def hex(self) -> str:
        """The trace id as 32 hex digits, as the W3C header and the inference log write it."""
        return f"{self.trace_id:032x}"


class SpanEmitter:
    """Emits span plans as finished OpenTelemetry spans: the caller's trace continued, or new."""

    def __init__(
        self,
        provider: "TracerProvider",
        processor: "SpanProcessor",
        scope: "InstrumentationScope",
        propagator: "TraceContextTextMapPropagator",
    ) -> None:
        self._provider = provider  # owns the processor; its sampler and resource are used
        self._processor = processor
        self._scope = scope
        self._propagator = propagator

    def begin(self, carrier: Mapping[str, str]) -> Begun:
        """The request's trace: the caller's, from a valid `traceparent` in `carrier` (lower-case
        headers, with its `tracestate`), else a new random id."""
        from opentelemetry.trace import get_current_span

        parent = self._propagator.extract(carrier)
        caller = get_current_span(parent).get_span_context()
        return Begun(caller.trace_id if caller.is_valid else _random_id(128), parent)

    def emit(
        self, begun: Begun, request: SpanPlan, children: Callable[[], Sequence[SpanPlan]]
    ) -> None:
        """Emit a request span and its children, if the sampler keeps the trace.

        The children are planned only then. The request span is a server span, a child of the
        caller's span when there is one; the others are its children.
        """
        from opentelemetry.sdk.trace import ReadableSpan
        from opentelemetry.sdk.trace.sampling import Decision
        from opentelemetry.trace import (
            SpanContext,
            SpanKind,
            Status,
            StatusCode,
            TraceFlags,
            get_current_span,
        )

        sampled = self._provider.sampler.should_sample(
            begun.parent, begun.trace_id, request.name, SpanKind.SERVER, request.attributes
        )
        if sampled.decision is not Decision.RECORD_AND_SAMPLE:
            return
        flags = TraceFlags(TraceFlags.SAMPLED)
        caller = get_current_span(begun.parent).get_span_context()
        request_context = SpanContext(
            begun.trace_id, _random_id(64), False, flags, sampled.trace_state
        )
        resource = self._provider.resource
        # The request span's attributes are what the sampler returns, as the SDK's Tracer has it.
        kept: Mapping[str, Any] = sampled.attributes or request.attributes

        def finished(plan: SpanPlan, parent: SpanContext | None, server: bool) -> ReadableSpan:
            context = SpanContext(begun.trace_id, _random_id(64), False, flags, sampled.trace_state)
            return ReadableSpan(
                plan.name,
                context=request_context if server else context,
                parent=parent,
                resource=resource,
                attributes=kept if server else plan.attributes,
                kind=SpanKind.SERVER if server else SpanKind.INTERNAL,
                status=Status(StatusCode.ERROR, plan.error) if plan.error else Status(),
                start_time=plan.start_ns,
                end_time=plan.end_ns,
                instrumentation_scope=self._scope,
            )

        for plan in children():
            self._processor.on_end(finished(plan, request_context, server=False))
        parent = caller if caller.is_valid else None
        self._processor.on_end(finished(request, parent, server=True))

    def shutdown(self) -> None:
        """Export the spans still queued, then stop the exporter (blocking: call off the loop)."""
        self._provider.shutdown()


def _random_id(bits: int) -> int:
    """A random trace (128 bits) or span (64 bits) id, never 0, the invalid id."""
    while not (found := random.getrandbits(bits)):
        pass
    return found


def build_emitter(
    settings: Tracing, version: str, environ: Mapping[str, str] = os.environ
) -> SpanEmitter | None:
    """The process's tracing: spans exported over OTLP/HTTP through a BatchSpanProcessor.

    None when `OTEL_SDK_DISABLED` is true: the SDK would make no spans.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        logger.warning("tracing is enabled, but OTEL_SDK_DISABLED=true turns it off")
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    provider = TracerProvider(
        sampler=_sampler(settings.sample_ratio),
        resource=service_resource(settings.service_name, version),
        shutdown_on_exit=False,  # Runtime.stop shuts it down, after the last request
    )
    processor = BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint))
    provider.add_span_processor(processor)
    logger.info("tracing on: spans go over OTLP/HTTP to %s", exporter_endpoint(settings, environ))
    scope = InstrumentationScope("gateway", version)
    return SpanEmitter(provider, processor, scope, TraceContextTextMapPropagator())


def exporter_endpoint(settings: Tracing, environ: Mapping[str, str]) -> str:
    """Where spans go: the config's URL, else the OTEL_* variables', else the SDK's default."""
    if settings.endpoint is not None:
        return settings.endpoint
    traces = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if traces:
        return traces
    base = environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"{base.rstrip('/')}/v1/traces" if base else "http://localhost:4318/v1/traces"


def _sampler(ratio: float | None) -> "Sampler | None":
    """A parent-based ratio sampler; None lets the SDK read OTEL_TRACES_SAMPLER (default: all)."""
    if ratio is None:
        return None
    from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

    return ParentBased(TraceIdRatioBased(ratio))


def service_resource(service_name: str | None, version: str) -> "Resource":
    """The service's resource: the config's name, else OTEL_SERVICE_NAME's, else ours."""
    from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource

    named = {} if service_name is None else {SERVICE_NAME: service_name}
    resource = Resource.create({SERVICE_VERSION: version, **named})
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return resource
