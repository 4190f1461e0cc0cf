"""Every Prometheus metric of the gateway, declared once, and their exposition for one or N workers.

With `--workers N` each worker writes its values to PROMETHEUS_MULTIPROC_DIR (made or emptied
by `gateway serve` before this module is first imported) and a scrape of any worker merges all of them. Every
gauge therefore names its multiprocess mode. Label values are bounded: configured endpoint and
variant names, version numbers, HTTP status codes and a fixed set of reasons.
"""

import os
from bisect import bisect_left
from collections.abc import Callable
from typing import NamedTuple, TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    multiprocess,
)
from prometheus_client.exposition import choose_encoder

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# Request latency of a Python gateway spans ~0.3 ms (alone) to seconds (a large batch or a slow
# model); the defaults of prometheus-client start at 5 ms and would put most requests in one bucket.
_LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

REQUESTS = Counter(
    "gateway_requests_total",
    "Invocations answered, by endpoint, variant, model version and HTTP status.",
    ["endpoint", "variant", "model_version", "status"],
)
REQUEST_DURATION = Histogram(
    "gateway_request_duration_seconds",
    "Time from reading an invocation to its answer, by endpoint and variant.",
    ["endpoint", "variant"],
    buckets=_LATENCY_BUCKETS,
)
PREDICT_DURATION = Histogram(
    "gateway_predict_duration_seconds",
    "Time in the model's predict call (a merged batch's call for each of its requests).",
    ["endpoint", "variant", "model_version"],
    buckets=_LATENCY_BUCKETS,
)
QUEUE_DURATION = Histogram(
    "gateway_queue_duration_seconds",
    "Time a request waited for a worker thread to take it: for its batch to form and start.",
    ["endpoint", "variant", "model_version"],
    buckets=_LATENCY_BUCKETS,
)
SHED = Counter(
    "gateway_shed_total",
    "Invocations refused with a 503 because their worker was overloaded, by reason "
    "(in_flight: max_in_flight reached; queue_time: waited past max_queue_ms, or past "
    "standing_queue_ms under a standing queue, for predict; "
    "body_bytes: max_in_flight_bytes of request bodies held).",
    ["endpoint", "reason"],
)
FALLBACK = Counter(
    "gateway_fallback_total",
    "Invocations whose variant failed with a server error and were answered by the endpoint's "
    "fallback variant instead, by the variant that failed and its status.",
    ["endpoint", "variant", "status"],
)
ROWS = Counter(
    "gateway_rows_predicted_total",
    "Rows predicted, by endpoint, variant and model version.",
    ["endpoint", "variant", "model_version"],
)
IN_FLIGHT = Gauge(
    "gateway_requests_in_flight",
    "Invocations being answered now.",
    ["endpoint"],
    multiprocess_mode="livesum",
)
IN_FLIGHT_LIMIT = Gauge(
    "gateway_in_flight_limit",
    "Invocations the workers admit at once: max_in_flight each, less while a worker is "
    "overloaded (two full batches of each version that shed for queue time).",
    multiprocess_mode="livesum",
)
WEIGHT = Gauge(
    "gateway_variant_weight",
    "The live routing weight of each variant.",
    ["endpoint", "variant"],
    multiprocess_mode="livemostrecent",
)
MODEL_INFO = Gauge(
    "gateway_model_info",
    "1 for the model version each variant serves, 0 for one it served before.",
    ["endpoint", "variant", "model", "model_version"],
    multiprocess_mode="livemax",
)
MODEL_LOAD_FAILURES = Counter(
    "gateway_model_load_failures_total",
    "Model versions that failed to load, by endpoint and variant.",
    ["endpoint", "variant"],
)
REFRESH_FAILURES = Counter(
    "gateway_registry_refresh_failures_total",
    "Refreshes of an endpoint that failed, by reason (unreachable, not_found, load_failed, error).",
    ["endpoint", "reason"],
)
SHADOW_DROPPED = Counter(
    "gateway_shadow_dropped_total",
    "Shadow copies not predicted because the endpoint's shadow slots were all busy.",
    ["endpoint", "shadow"],
)
SHADOW_ROWS_COMPARED = Counter(
    "gateway_shadow_rows_compared_total",
    "Rows whose shadow prediction was compared with the served one.",
    ["endpoint", "shadow", "model_version"],
)
SHADOW_ROWS_DIFFERING = Counter(
    "gateway_shadow_rows_differing_total",
    "Compared rows whose shadow prediction differed from the served one.",
    ["endpoint", "shadow", "model_version"],
)
SHADOW_ERRORS = Counter(
    "gateway_shadow_errors_total",
    "Shadow predictions that failed.",
    ["endpoint", "shadow", "model_version"],
)
BATCH_QUEUE = Gauge(
    "gateway_batch_queue_depth",
    "Requests waiting for the next batch of their model version.",
    ["endpoint", "variant"],
    multiprocess_mode="livesum",
)
BATCH_ROWS = Histogram(
    "gateway_batch_rows",
    "Rows per merged predict call.",
    ["endpoint", "variant"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
)
LOG_QUEUE_DEPTH = Gauge(
    "gateway_inference_log_queue_depth",
    "Inference-log records waiting to be written.",
    multiprocess_mode="livesum",
)
LOG_DROPPED = Counter(
    "gateway_inference_log_dropped_total",
    "Inference-log records lost, by reason (queue_full, write_error).",
    ["reason"],
)


# The request path's updates are summed here in plain Python and written to the metrics every
# FLUSH_SECONDS (`flush`, from the event loop), and before this worker answers a scrape. With
# several workers each write is a lock and an mmap write (~1.3 us; an observation ~2.6 us), about
# a dozen a request: most of what metrics cost under load. A scrape answered by another worker
# sees this worker's counts of up to FLUSH_SECONDS ago; Prometheus scrapes every 10 s or more.
# Every update and every flush runs on the worker's event loop, so these sums need no lock.
FLUSH_SECONDS = 0.5


class _Count:
    """A counter child's increments since the last flush."""

    __slots__ = ("_child", "_pending")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self._pending = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self._pending += amount

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, 0.0
            self._child.inc(pending)


class _Observations:
    """A histogram child's observations since the last flush: a count per bucket and their sum."""

    __slots__ = ("_bounds", "_child", "_counts", "_pending", "_sum")

    def __init__(self, child: Histogram) -> None:
        self._child = child
        self._bounds = list(histogram_bounds(child))
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
        self._pending = False

    def observe(self, amount: float) -> None:
        # The first bucket whose bound is >= amount, as `Histogram.observe` counts it.
        self._counts[bisect_left(self._bounds, amount)] += 1
        self._sum += amount
        self._pending = True

    def flush(self) -> None:
        if self._pending:
            counts, total = self._counts, self._sum
            self._counts, self._sum, self._pending = [0] * len(counts), 0.0, False
            add_observations(self._child, counts, total)


class Level:
    """A gauge child's value, kept here and written when it changed since the last flush."""

    __slots__ = ("_child", "_written", "value")

    def __init__(self, child: Gauge) -> None:
        self._child = child
        self.value = 0.0
        self._written: float | None = None

    def add(self, amount: float) -> None:
        self.value += amount

    def flush(self) -> None:
        if self.value != self._written:
            self._written = self.value
            self._child.set(self.value)


_pending: list[_Count | _Observations | Level] = []


_Tally = TypeVar("_Tally", _Count, _Observations, Level)


def _tracked(tally: _Tally) -> _Tally:
    _pending.append(tally)
    return tally


def flush() -> None:
    """Write every update the request path made since the last flush (on the event loop)."""
    for tally in _pending:
        tally.flush()


def histogram_bounds(child: Histogram) -> tuple[float, ...]:
    """The upper bounds of a histogram child's buckets, +Inf last (prometheus-client's own)."""
    return tuple(child._upper_bounds)


def add_observations(child: Histogram, counts: list[int], total: float) -> None:
    """Add observations to a histogram child: `counts[i]` more in bucket i, `total` more in its
    sum. prometheus-client observes one value at a time; this writes its bucket and sum values
    as `observe` would have after all of them (a private part of the client, tested)."""
    if total:
        child._sum.inc(total)
    for bucket, count in zip(child._buckets, counts, strict=True):
        if count:
            bucket.inc(count)


class RequestMeters(NamedTuple):
    """What counts one request of one endpoint, variant, version and status."""

    answered: Callable[[], None]
    duration: Callable[[float], None]
    predict_duration: Callable[[float], None]
    queue_duration: Callable[[float], None]
    rows: Callable[[float], None]


# `labels()` costs ~2 us a call (it checks and converts every value); the request path looks each
# set of children up once. The label values are bounded, and so are these caches.
_request_meters: dict[tuple[str, str, str, int], RequestMeters] = {}
_levels: dict[tuple[Gauge, tuple[str, ...]], Level] = {}


def request_meters(endpoint: str, variant: str, version: str, status: int) -> RequestMeters:
    """The per-request metrics of one label set, written at the next `flush`."""
    key = (endpoint, variant, version, status)
    meters = _request_meters.get(key)
    if meters is None:
        meters = _request_meters[key] = RequestMeters(
            _tracked(_Count(REQUESTS.labels(endpoint, variant, version, str(status)))).inc,
            _tracked(_Observations(REQUEST_DURATION.labels(endpoint, variant))).observe,
            _tracked(_Observations(PREDICT_DURATION.labels(endpoint, variant, version))).observe,
            _tracked(_Observations(QUEUE_DURATION.labels(endpoint, variant, version))).observe,
            _tracked(_Count(ROWS.labels(endpoint, variant, version))).inc,
        )
    return meters


def level(gauge: Gauge, *labels: str) -> Level:
    """One child of a gauge the request path moves up and down, written at the next `flush`."""
    key = (gauge, labels)
    found = _levels.get(key)
    if found is None:
        found = _levels[key] = _tracked(Level(gauge.labels(*labels)))
    return found


def in_flight(endpoint: str) -> Level:
    """The in-flight gauge of one endpoint."""
    return level(IN_FLIGHT, endpoint)


def is_multiprocess() -> bool:
    """Whether metrics are shared through files because several workers serve."""
    return bool(os.environ.get(MULTIPROC_ENV))


def exposition(accept: str | None) -> tuple[bytes, str]:
    """The scrape body and its content type; OpenMetrics when the scraper asks for it."""
    encoder, content_type = choose_encoder(accept or "")
    if is_multiprocess():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return encoder(registry), content_type
    return encoder(REGISTRY), content_type


def worker_exited(pid: int) -> None:
    """Drop a dead worker's live gauges from the merged view."""
    if is_multiprocess():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def count_log_drop(reason: str, count: int) -> None:
    """Count inference-log records lost for `reason`."""
    LOG_DROPPED.labels(reason).inc(count)
