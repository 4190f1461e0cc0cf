"""The span plan of an invocation (pure): epoch times from perf_counter instants, nesting, order."""

import pytest

from gateway.core.spans import (
    EpochClock,
    PartFacts,
    SpanPlan,
    Stages,
    invocation_route,
    plan_children,
)

WALL = 1_764_500_000.123456  # seconds since the epoch at the invocation's arrival
PERF = 1000.0  # perf_counter at the same instant
CLOCK = EpochClock(WALL, PERF)
START_NS = round(WALL * 1e9)


@pytest.mark.parametrize(
    ("instant", "expected"),
    [
        (PERF, START_NS),
        (PERF + 0.000_001, START_NS + 1_000),
        (PERF + 0.002_5, START_NS + 2_500_000),
        (PERF + 1.5, START_NS + 1_500_000_000),
        (PERF - 0.000_2, START_NS - 200_000),
    ],
)
def test_perf_counter_instants_become_epoch_nanoseconds(instant: float, expected: int) -> None:
    assert CLOCK.ns(instant) == expected


def test_a_microsecond_apart_stays_a_microsecond_apart_late_in_the_epoch() -> None:
    # An epoch in float seconds has ~0.2 µs steps; the offset is added in whole nanoseconds.
    late = EpochClock(4_000_000_000.0, 5_000_000.0)
    assert late.ns(5_000_000.000_001) - late.ns(5_000_000.0) == 1_000


def stages(base: float = PERF, *, predict: tuple[float, float] = (0.004, 0.009)) -> Stages:
    return Stages(
        queued=base + 0.001,
        taken=base + 0.002,
        parse_start=base + 0.002,
        parse_end=base + 0.003,
        predict_start=base + predict[0],
        predict_end=base + predict[1],
        encode_start=base + 0.009,
        encode_end=base + 0.010,
        batch_rows=8,
    )


REQUEST = SpanPlan(
    "POST /invocations",
    CLOCK.ns(PERF),
    CLOCK.ns(PERF + 0.011),
    {"gateway.endpoint": "churn", "gateway.routing": "sticky", "url.path": "/invocations"},
)


def plan(parts: list[PartFacts], received: float = PERF + 0.0005) -> list[SpanPlan]:
    return plan_children(CLOCK, received=received, ended=PERF + 0.011, request=REQUEST, parts=parts)


def test_the_stages_of_one_variant_follow_one_another_inside_the_request() -> None:
    spans = plan([PartFacts("champion", "1", 2, stages())])
    assert [span.name for span in spans] == ["routing", "queue", "parse", "predict", "encode"]
    assert [(span.start_ns - START_NS, span.end_ns - START_NS) for span in spans] == [
        (500_000, 1_000_000),
        (1_000_000, 2_000_000),
        (2_000_000, 3_000_000),
        (4_000_000, 9_000_000),
        (9_000_000, 10_000_000),
    ]
    assert spans[0].attributes == {"gateway.endpoint": "churn", "gateway.routing": "sticky"}
    assert spans[3].attributes == {
        "gateway.variant": "champion",
        "gateway.model_version": "1",
        "gateway.rows": 2,
        "gateway.batch.rows": 8,
    }
    assert all(span.error is None for span in spans)


def test_a_request_split_between_variants_has_one_predict_span_each() -> None:
    parts = [
        PartFacts("champion", "1", 3, stages(predict=(0.004, 0.006))),
        PartFacts("challenger", "2", 1, stages(predict=(0.006, 0.009))),
    ]
    spans = plan(parts)
    assert [span.name for span in spans] == [
        "routing",
        "queue",
        "parse",
        "predict",
        "predict",
        "encode",
    ]
    assert [span.attributes["gateway.variant"] for span in spans[1:]] == [
        "champion,challenger",
        "champion,challenger",
        "champion",
        "challenger",
        "champion,challenger",
    ]


def test_a_request_that_no_worker_answered_has_no_children() -> None:
    assert plan([PartFacts("champion", "1", 0, None)]) == []
    assert plan([]) == []


def test_children_never_start_before_the_body_was_read_nor_end_after_the_answer() -> None:
    late_body = PERF + 0.0015  # read after the instant the stages say it was queued
    late = stages()._replace(encode_end=PERF + 0.5)  # past the outcome: clamped
    spans = plan([PartFacts("champion", "1", 1, late)], received=late_body)
    for span in spans:
        assert CLOCK.ns(late_body) <= span.start_ns <= span.end_ns <= REQUEST.end_ns
    assert spans[0].end_ns == spans[0].start_ns  # routing: nothing left of it


@pytest.mark.parametrize(
    ("endpoint", "path", "route"),
    [
        (None, "/invocations", "/invocations"),
        ("churn", "/endpoints/churn/invocations", "/endpoints/{name}/invocations"),
        ("churn", "/serving-endpoints/churn/invocations", "/serving-endpoints/{name}/invocations"),
    ],
)
def test_the_route_is_the_template_the_path_matched(
    endpoint: str | None, path: str, route: str
) -> None:
    assert invocation_route(endpoint, path) == route
