"""OpenTelemetry for one process: its tracer provider, the OTLP/HTTP exporter, and span emission.

Spans arrive as plans (`gateway.core.spans`) once an invocation's outcome is known, with the
start and end times its pipeline measured; a BatchSpanProcessor exports them from a thread of
its own, so the event loop never waits on the collector. The provider is the gateway's own, never
the global one (MLflow has tracing of its own). OpenTelemetry is imported only when tracing is on.

Settings left unset in the config fall back to the SDK's `OTEL_*` variables (endpoint, headers,
timeout, sampler, batch sizes, resource attributes), then to the SDK's defaults; the service name
falls back to `DEFAULT_SERVICE_NAME`.
"""

import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

from gateway.core.config import DEFAULT_SERVICE_NAME, Tracing
from gateway.core.spans import SpanPlan

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.id_generator import IdGenerator
    from opentelemetry.sdk.trace.sampling import Sampler
    from opentelemetry.trace import Tracer
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
    """Replays span plans as OpenTelemetry spans: the caller's trace continued, or a new one."""

    def __init__(
        self,
        provider: "TracerProvider",
        tracer: "Tracer",
        propagator: "TraceContextTextMapPropagator",
        preset: Callable[[int], None],
    ) -> None:
        self._provider = provider
        self._tracer = tracer
        self._propagator = propagator
        self._preset = preset  # sets the id of the next new trace

    def begin(self, carrier: Mapping[str, str]) -> Begun:
        """The request's trace: the caller's, from a valid `traceparent` in `carrier` (lower-case
        headers, with its `tracestate`), else a new random id."""
        from opentelemetry.trace import get_current_span

        parent = self._propagator.extract(carrier)
        caller = get_current_span(parent).get_span_context()
        return Begun(caller.trace_id if caller.is_valid else _new_trace_id(), parent)

    def emit(
        self, begun: Begun, request: SpanPlan, children: Callable[[], Sequence[SpanPlan]]
    ) -> None:
        """Emit a request span and its children; the children are planned only when sampled.

        Call it on one thread only (the event loop): the id of a new trace is handed to the
        provider's id generator just before the span that needs it is started.
        """
        from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

        self._preset(begun.trace_id)
        span = self._tracer.start_span(
            request.name,
            context=begun.parent,
            kind=SpanKind.SERVER,
            attributes=request.attributes,
            start_time=request.start_ns,
        )
        self._preset(0)
        if not span.is_recording():
            return
        inside = set_span_in_context(span)
        for plan in children():
            child = self._tracer.start_span(
                plan.name, context=inside, attributes=plan.attributes, start_time=plan.start_ns
            )
            child.end(end_time=plan.end_ns)
        if request.error is not None:
            span.set_status(Status(StatusCode.ERROR, request.error))
        span.end(end_time=request.end_ns)

    def shutdown(self) -> None:
        """Export the spans still queued, then stop the exporter (blocking: call off the loop)."""
        self._provider.shutdown()


def _new_trace_id() -> int:
    """128 random bits, never 0 (the invalid id), as the SDK's own generator makes them."""
    while not (trace_id := random.getrandbits(128)):
        pass
    return trace_id


def preset_trace_ids() -> "tuple[IdGenerator, Callable[[int], None]]":
    """An id generator, and how to set the trace id the next new trace gets (0: a random one)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class Preset(RandomIdGenerator):
        def __init__(self) -> None:
            self.next = 0

        def preset(self, trace_id: int) -> None:
            self.next = trace_id

        def generate_trace_id(self) -> int:
            return self.next or super().generate_trace_id()

    generator = Preset()
    return generator, generator.preset


def build_emitter(
    settings: Tracing, version: str, environ: Mapping[str, str] = os.environ
) -> SpanEmitter | None:
    """The process's tracer provider, exporting over OTLP/HTTP through a BatchSpanProcessor.

    None when `OTEL_SDK_DISABLED` is true: the SDK would make no spans.
    """
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        logger.warning("tracing is enabled, but OTEL_SDK_DISABLED=true turns it off")
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ids, preset = preset_trace_ids()
    provider = TracerProvider(
        sampler=_sampler(settings.sample_ratio),
        resource=service_resource(settings.service_name, version),
        shutdown_on_exit=False,  # Runtime.stop shuts it down, after the last request
        id_generator=ids,
    )
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=settings.endpoint)))
    tracer = provider.get_tracer("gateway", version)
    logger.info("tracing on: spans go over OTLP/HTTP to %s", exporter_endpoint(settings, environ))
    return SpanEmitter(provider, tracer, TraceContextTextMapPropagator(), preset)


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
