"""Tracing on a real server: spans exported over OTLP/HTTP to a receiver on loopback, decoded."""

import contextlib
import itertools
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from gateway.core.config import GatewayConfig
from tests.helpers import read_records
from tests.integration.conftest import running_gateway, split_payload, wait_until

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{CALLER_TRACE}-{CALLER_SPAN}-01"
BAD_TRACE = "0af7651916cd43dd8448eb211c80319c"
BAD_TRACEPARENT = f"00-{BAD_TRACE}-b7ad6b7169203331-01"
ROW = [3, 89.5, 4, "basic"]
CHILDREN = ["routing", "queue", "parse", "predict", "encode"]


class Receiver:
    """A tiny OTLP/HTTP receiver on 127.0.0.1: keeps every span POSTed to /v1/traces."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.paths: list[str] = []
        received = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                received.paths.append(self.path)
                received.requests.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def spans(self) -> list[Span]:
        return [
            span
            for request in self.requests
            for resource in request.resource_spans
            for scope in resource.scope_spans
            for span in scope.spans
        ]

    def service_names(self) -> set[str]:
        return {
            attribute.value.string_value
            for request in self.requests
            for resource in request.resource_spans
            for attribute in resource.resource.attributes
            if attribute.key == "service.name"
        }


@contextlib.contextmanager
def receiving() -> Iterator[Receiver]:
    made = Receiver()
    made.thread.start()
    try:
        yield made
    finally:
        made.server.shutdown()
        made.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with receiving() as made:
        yield made


def value(any_value: AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


def attributes(span: Span) -> dict[str, object]:
    return {attribute.key: value(attribute.value) for attribute in span.attributes}


@dataclass
class Traced:
    responses: dict[str, httpx.Response]
    spans: list[Span]
    records: dict[str, dict[str, Any]]
    service_names: set[str]


def serve_and_trace(
    config: GatewayConfig, receiver: Receiver, log_dir: Path, expected_spans: int
) -> Traced:
    """Three requests (continued, new, bad JSON) to a traced gateway, stopped to flush."""
    with running_gateway(config) as url:
        endpoint = f"{url}/endpoints/churn/invocations"
        responses = {
            "continued": httpx.post(
                endpoint,
                json=split_payload([ROW, ROW]),
                headers={
                    "traceparent": TRACEPARENT,
                    "tracestate": "vendor=1",
                    "x-request-id": "continued",
                },
            ),
            "new": httpx.post(
                f"{url}/invocations", json=split_payload([ROW]), headers={"x-request-id": "new"}
            ),
            "bad": httpx.post(
                endpoint,
                content=b'{"dataframe_split": ',
                headers={
                    "content-type": "application/json",
                    "traceparent": BAD_TRACEPARENT,
                    "x-request-id": "bad",
                },
            ),
        }
    # Stopping the gateway flushed its span processor: every span is at the receiver by now.
    wait_until(lambda: len(receiver.spans()) >= expected_spans, "the spans to arrive", 10)
    records = {record["request_id"]: record for record in read_records(log_dir)}
    return Traced(responses, receiver.spans(), records, receiver.service_names())


@pytest.fixture(scope="module", params=["auto", "off"], ids=["batched", "unbatched"])
def traced(
    request: pytest.FixtureRequest,
    make_config: Callable[..., GatewayConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Traced]:
    """One traced gateway per batching setting, its spans and records, shared by the tests."""
    log_dir = tmp_path_factory.mktemp("traced-logs")
    with receiving() as receiver:
        config = make_config(
            [
                {
                    "name": "churn",
                    "model": "churn",
                    "variants": [{"alias": "champion", "weight": 1}],
                    "batching": request.param,
                }
            ],
            tracing={"enabled": True, "endpoint": receiver.url},
            inference_log={"dir": str(log_dir)},
        )
        # Two answered requests of six spans each, and the bad one's request span.
        yield serve_and_trace(config, receiver, log_dir, expected_spans=2 * 6 + 1)


def trace_of(traced: Traced, request_id: str) -> tuple[Span, list[Span]]:
    """A request's server span and its children, by the request id attribute."""
    (server,) = [
        span for span in traced.spans if attributes(span).get("gateway.request_id") == request_id
    ]
    children = [span for span in traced.spans if span.parent_span_id == server.span_id]
    return server, children


def test_a_callers_traceparent_is_continued_by_the_request_span(traced: Traced) -> None:
    assert traced.responses["continued"].status_code == 200
    server, _ = trace_of(traced, "continued")
    assert server.trace_id.hex() == CALLER_TRACE
    assert server.parent_span_id.hex() == CALLER_SPAN
    assert server.trace_state == "vendor=1"
    assert server.kind == Span.SPAN_KIND_SERVER
    assert server.name == "POST /endpoints/{name}/invocations"
    assert attributes(server) == {
        "http.request.method": "POST",
        "http.route": "/endpoints/{name}/invocations",
        "url.path": "/endpoints/churn/invocations",
        "http.response.status_code": 200,
        "gateway.request_id": "continued",
        "gateway.endpoint": "churn",
        "gateway.routing": "random",
        "gateway.variant": "champion",
        "gateway.model_version": "1",
        "gateway.rows": 2,
    }
    assert server.status.code == Status.STATUS_CODE_UNSET
    assert traced.service_names == {"mlflow-serving-gateway"}


def test_the_stages_are_children_of_the_request_span_in_order(traced: Traced) -> None:
    server, children = trace_of(traced, "continued")
    assert [span.name for span in children] == CHILDREN
    assert all(span.trace_id == server.trace_id for span in children)
    assert all(span.kind == Span.SPAN_KIND_INTERNAL for span in children)
    for span in children:
        assert server.start_time_unix_nano <= span.start_time_unix_nano
        assert span.start_time_unix_nano <= span.end_time_unix_nano <= server.end_time_unix_nano
    # The stages follow one another: each starts when or after the one before ended.
    for before, after in itertools.pairwise(children):
        assert before.end_time_unix_nano <= after.start_time_unix_nano
    by_name = {span.name: span for span in children}
    assert attributes(by_name["routing"]) == {
        "gateway.endpoint": "churn",
        "gateway.routing": "random",
    }
    assert attributes(by_name["predict"]) == {
        "gateway.variant": "champion",
        "gateway.model_version": "1",
        "gateway.rows": 2,
        "gateway.batch.rows": 2,
    }
    assert attributes(by_name["parse"]) == {"gateway.variant": "champion"}


def test_a_request_without_traceparent_starts_a_new_trace(traced: Traced) -> None:
    server, children = trace_of(traced, "new")
    assert server.trace_id.hex() not in (CALLER_TRACE, BAD_TRACE)
    assert server.parent_span_id == b""
    assert server.name == "POST /invocations"
    assert [span.name for span in children] == CHILDREN


def test_the_record_carries_the_trace_id_of_its_spans(traced: Traced) -> None:
    for request_id in ("continued", "new", "bad"):
        server, _ = trace_of(traced, request_id)
        assert traced.records[request_id]["trace_id"] == server.trace_id.hex()
    assert traced.records["continued"]["trace_id"] == CALLER_TRACE


def test_a_bad_request_gives_a_request_span_with_error_status(traced: Traced) -> None:
    assert traced.responses["bad"].status_code == 400
    server, children = trace_of(traced, "bad")
    assert server.trace_id.hex() == BAD_TRACE
    assert server.status.code == Status.STATUS_CODE_ERROR
    assert server.status.message == traced.responses["bad"].json()["message"]
    found = attributes(server)
    assert found["http.response.status_code"] == 400
    assert found["error.type"] == "BAD_REQUEST"
    assert children == []


def test_tracing_off_sends_nothing_and_records_no_trace_id(
    make_config: Callable[..., GatewayConfig], receiver: Receiver, tmp_path: Path
) -> None:
    config = make_config(
        tracing={"enabled": False, "endpoint": receiver.url}, inference_log={"dir": str(tmp_path)}
    )
    with running_gateway(config) as url:
        answer = httpx.post(
            f"{url}/invocations",
            json=split_payload([ROW]),
            headers={"traceparent": TRACEPARENT, "x-request-id": "untraced"},
        )
    assert answer.status_code == 200
    (record,) = read_records(tmp_path)
    assert record["trace_id"] is None
    assert receiver.requests == []
