"""The spans of one invocation, planned from the instants its pipeline measured (pure).

The request path keeps `perf_counter` instants as plain floats (`Stages`); once the outcome is
known, `plan_children` turns them into span plans with epoch-nanosecond times, and the tracing
exporter only replays them. Nothing here knows OpenTelemetry, the event loop or threads.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

Attributes = Mapping[str, str | int | float | bool]

# Span names under the request span, one per stage of the pipeline.
ROUTING = "routing"
QUEUE = "queue"
PARSE = "parse"
PREDICT = "predict"
ENCODE = "encode"


class Stages(NamedTuple):
    """When one request went through each stage on its worker thread (`perf_counter` seconds)."""

    queued: float  # handed to the batcher or the executor
    taken: float  # a worker thread took it
    parse_start: float
    parse_end: float
    predict_start: float
    predict_end: float
    encode_start: float
    encode_end: float
    batch_rows: int  # rows of the `predict` call that served it (more than its own when merged)


class EpochClock(NamedTuple):
    """Converts `perf_counter` instants to nanoseconds since the epoch, from one paired reading."""

    wall: float  # seconds since the epoch (time.time())
    perf: float  # perf_counter at the same instant

    def ns(self, instant: float) -> int:
        """`instant` (perf_counter seconds) as nanoseconds since the epoch.

        The wall reading is converted once and the offset added in whole nanoseconds, so the
        order and distance of two instants survive (an epoch in float seconds keeps ~0.2 µs).
        """
        return round(self.wall * 1e9) + round((instant - self.perf) * 1e9)


@dataclass(frozen=True)
class SpanPlan:
    """One span to emit: its name, start and end (epoch ns) and attributes."""

    name: str
    start_ns: int
    end_ns: int
    attributes: Attributes
    error: str | None = None  # a description: the span's status is an error


@dataclass(frozen=True)
class PartFacts:
    """What one variant did for a request, as the span plan needs it."""

    variant: str
    model_version: str
    rows: int
    stages: Stages | None


def plan_children(
    clock: EpochClock,
    *,
    received: float,
    ended: float,
    request: SpanPlan,
    parts: Sequence[PartFacts],
) -> list[SpanPlan]:
    """The request span's children, in pipeline order.

    `received` is when the body was read and routing began; `ended` when the outcome was known.
    Stages of a request routed per row are shared but its `predict` calls: queue, parse and
    encode appear once, predict once per variant. Without stages (the request failed before a
    worker answered it) there are none.
    """
    spans: list[SpanPlan] = []
    timed = [part for part in parts if part.stages is not None]
    if not timed:
        return spans
    first = timed[0].stages
    assert first is not None
    variants = ",".join(part.variant for part in timed)
    shared: Attributes = {"gateway.variant": variants}

    def span(name: str, start: float, end: float, attributes: Attributes = shared) -> SpanPlan:
        # Never before `received` nor past `ended`: children nest inside the request span.
        start_ns = clock.ns(min(max(start, received), ended))
        return SpanPlan(name, start_ns, max(start_ns, clock.ns(min(end, ended))), attributes)

    routing = {key: request.attributes[key] for key in _ROUTING_KEYS if key in request.attributes}
    spans.append(span(ROUTING, received, first.queued, routing))
    spans.append(span(QUEUE, first.queued, first.taken))
    spans.append(span(PARSE, first.parse_start, first.parse_end))
    for part in timed:
        stages = part.stages
        assert stages is not None
        attributes: Attributes = {
            "gateway.variant": part.variant,
            "gateway.model_version": part.model_version,
            "gateway.rows": part.rows,
            "gateway.batch.rows": stages.batch_rows,
        }
        spans.append(span(PREDICT, stages.predict_start, stages.predict_end, attributes))
    spans.append(span(ENCODE, first.encode_start, first.encode_end))
    return spans


def invocation_route(endpoint: str | None, path: str) -> str:
    """The route template a request matched: `/invocations` or the named endpoint's route."""
    if endpoint is None:
        return "/invocations"
    if path.startswith("/serving-endpoints/"):
        return "/serving-endpoints/{name}/invocations"
    return "/endpoints/{name}/invocations"


_ROUTING_KEYS = ("gateway.endpoint", "gateway.routing")
