"""Spans replayed from an outcome: the caller's trace continued, sampling, the service name."""

from collections.abc import Callable, Mapping, Sequence

import pytest
from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanKind, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from gateway.core.config import Endpoint, Tracing, Variant
from gateway.core.errors import GatewayError
from gateway.core.routing import Routing
from gateway.core.spans import SpanPlan, Stages
from gateway.observe.tracing import (
    Begun,
    SpanEmitter,
    build_emitter,
    exporter_endpoint,
    service_resource,
)
from gateway.serving.outcome import Decision, Invocation, Outcome
from gateway.serving.prediction import Part
from gateway.serving.tracing import Tracer

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
WALL = 1_764_500_000.0
PERF = 500.0
ENDPOINT = Endpoint(name="churn", model="churn", variants=(Variant(alias="champion"),))


def emitter(sampler: Sampler = ALWAYS_ON) -> tuple[SpanEmitter, InMemorySpanExporter]:
    exported = InMemorySpanExporter()
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    processor = SimpleSpanProcessor(exported)
    provider.add_span_processor(processor)
    scope = InstrumentationScope("test")
    return SpanEmitter(provider, processor, scope, TraceContextTextMapPropagator()), exported


def tracer(emit: SpanEmitter, deferred: list[Callable[[], None]] | None = None) -> Tracer:
    """A tracer whose spans are emitted at once, or kept in `deferred` until the test runs them."""
    if deferred is None:
        return Tracer(emit, defer=lambda work: work())
    return Tracer(emit, defer=deferred.append)


def outcome(
    headers: Mapping[str, str], error: GatewayError | None = None, received: float | None = PERF
) -> Outcome:
    stages = Stages(
        PERF + 1e-4,
        PERF + 2e-4,
        PERF + 2e-4,
        PERF + 3e-4,
        PERF + 4e-4,
        PERF + 8e-4,
        PERF + 8e-4,
        PERF + 9e-4,
        1,
    )
    invocation = Invocation(
        "req-1",
        "churn",
        b"{}",
        "application/json",
        dict(headers),
        WALL,
        PERF,
        path="/endpoints/churn/invocations",
        received=received,
    )
    part = Part("champion", "3", 1, None, 4e-4, 1e-4, None if error else stages)
    decision = Decision("champion", Routing.RANDOM, {"champion": 1})
    body = None if error else b'{"predictions": [0]}'
    return Outcome(invocation, ENDPOINT, decision, (part,), body, error, 1e-3)


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    return {span.name: span for span in spans}


def test_a_valid_traceparent_makes_the_request_span_a_child_of_the_callers() -> None:
    emit, exported = emitter()
    headers = {"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01", "tracestate": "a=1"}
    traced = tracer(emit).trace(outcome(headers))
    assert traced.trace_id == CALLER_TRACE
    spans = by_name(exported.get_finished_spans())
    server = spans["POST /endpoints/{name}/invocations"]
    assert server.kind is SpanKind.SERVER
    assert server.parent is not None
    assert f"{server.parent.span_id:016x}" == CALLER_SPAN
    assert server.context is not None
    assert server.context.trace_state.get("a") == "1"
    assert server.start_time == round(WALL * 1e9)
    assert server.end_time == round(WALL * 1e9) + 1_000_000
    assert set(spans) - {server.name} == {"routing", "queue", "parse", "predict", "encode"}
    for name in ("routing", "queue", "parse", "predict", "encode"):
        parent = spans[name].parent
        assert parent is not None
        assert parent.span_id == server.context.span_id


@pytest.mark.parametrize("traceparent", [None, "garbage", f"01-{CALLER_TRACE}-{CALLER_SPAN}"])
def test_without_a_valid_traceparent_a_new_trace_starts(traceparent: str | None) -> None:
    emit, exported = emitter()
    headers = {} if traceparent is None else {"traceparent": traceparent}
    traced = tracer(emit).trace(outcome(headers))
    (server,) = [span for span in exported.get_finished_spans() if span.kind is SpanKind.SERVER]
    assert server.parent is None
    assert server.context is not None
    assert traced.trace_id == f"{server.context.trace_id:032x}" != CALLER_TRACE


def test_a_trace_not_sampled_plans_no_children_but_keeps_its_id() -> None:
    emit, exported = emitter(ParentBased(TraceIdRatioBased(0.0)))
    planned: list[bool] = []

    def children() -> list[SpanPlan]:
        planned.append(True)
        return []

    request = SpanPlan("POST /invocations", 1, 2, {})
    begun = emit.begin({})
    emit.emit(begun, request, children)
    assert len(begun.hex) == 32
    assert planned == []
    assert exported.get_finished_spans() == ()
    # A caller's sampled flag is followed even at a ratio of 0.
    begun = emit.begin({"traceparent": f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"})
    emit.emit(begun, request, children)
    assert begun.hex == CALLER_TRACE
    assert planned == [True]


def test_a_new_trace_gets_the_id_its_record_was_given() -> None:
    emit, exported = emitter()
    begun = emit.begin({})
    emit.emit(begun, SpanPlan("POST /invocations", 1, 2, {}), list)
    (server,) = exported.get_finished_spans()
    assert server.context is not None
    assert server.context.trace_id == begun.trace_id
    # The next new trace gets an id of its own.
    emit.emit(emit.begin({}), SpanPlan("POST /invocations", 3, 4, {}), list)
    assert (
        len({span.context.trace_id for span in exported.get_finished_spans() if span.context}) == 2
    )


def test_the_spans_are_emitted_after_the_outcome_is_returned() -> None:
    emit, exported = emitter()
    deferred: list[Callable[[], None]] = []
    traced = tracer(emit, deferred).trace(outcome({}))
    assert traced.trace_id is not None
    assert exported.get_finished_spans() == ()
    (work,) = deferred
    work()
    assert {
        f"{span.context.trace_id:032x}" for span in exported.get_finished_spans() if span.context
    } == {traced.trace_id}


def test_a_failed_request_has_an_error_status_and_no_children() -> None:
    emit, exported = emitter()
    error = GatewayError("BAD_REQUEST", "The body is not valid JSON.")
    tracer(emit).trace(outcome({}, error))
    (server,) = exported.get_finished_spans()
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "The body is not valid JSON."
    assert server.attributes is not None
    assert server.attributes["error.type"] == "BAD_REQUEST"
    assert server.attributes["http.response.status_code"] == 400


def test_a_request_refused_before_its_body_was_read_has_only_its_request_span() -> None:
    emit, exported = emitter()
    tracer(emit).trace(outcome({}, GatewayError("PAYLOAD_TOO_LARGE", "Too large."), received=None))
    assert [span.kind for span in exported.get_finished_spans()] == [SpanKind.SERVER]


class BrokenEmitter(SpanEmitter):
    def __init__(self, fail_at: str) -> None:
        self.fail_at = fail_at

    def begin(self, carrier: Mapping[str, str]) -> Begun:
        if self.fail_at == "begin":
            raise RuntimeError("propagator bug")
        return Begun(1, Context())

    def emit(
        self, begun: Begun, request: SpanPlan, children: Callable[[], Sequence[SpanPlan]]
    ) -> None:
        raise RuntimeError("exporter bug")


def test_a_tracing_failure_leaves_the_outcome_as_it_was() -> None:
    original = outcome({})
    assert tracer(BrokenEmitter("begin")).trace(original) is original
    # A failure while emitting comes after the answer: the outcome already has its trace id.
    assert tracer(BrokenEmitter("emit")).trace(original).trace_id == f"{1:032x}"


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, "http://localhost:4318/v1/traces"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318/"}, "http://c:4318/v1/traces"),
        (
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318",
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:4318/custom",
            },
            "http://t:4318/custom",
        ),
    ],
)
def test_the_export_endpoint_falls_back_to_the_otel_variables(
    environ: dict[str, str], expected: str
) -> None:
    assert exporter_endpoint(Tracing(enabled=True), environ) == expected
    configured = Tracing(enabled=True, endpoint="http://config:4318/v1/traces")
    assert exporter_endpoint(configured, environ) == "http://config:4318/v1/traces"


def test_otel_sdk_disabled_turns_tracing_off() -> None:
    assert build_emitter(Tracing(enabled=True), "0", {"OTEL_SDK_DISABLED": "true"}) is None


@pytest.mark.parametrize(
    ("configured", "environ", "expected"),
    [
        (None, {}, "mlflow-serving-gateway"),
        (None, {"OTEL_SERVICE_NAME": "from-env"}, "from-env"),
        (None, {"OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs"}, "from-attrs"),
        ("from-config", {"OTEL_SERVICE_NAME": "from-env"}, "from-config"),
    ],
)
def test_the_service_name_comes_from_the_config_then_otel_variables_then_the_default(
    monkeypatch: pytest.MonkeyPatch, configured: str | None, environ: dict[str, str], expected: str
) -> None:
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    resource = service_resource(configured, "9.9.9")
    assert resource.attributes["service.name"] == expected
    assert resource.attributes["service.version"] == "9.9.9"
