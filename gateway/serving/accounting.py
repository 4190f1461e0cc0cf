"""What each outcome leaves behind, exactly once: its metrics and its inference-log records."""

import json
from collections.abc import Callable
from functools import partial
from typing import Any, get_args

from gateway.core.config import GatewayConfig
from gateway.core.errors import GatewayError, ShedError, ShedReason
from gateway.core.record import build_record, should_sample, user_key_hash
from gateway.core.routing import Routing
from gateway.observe import metrics
from gateway.observe.log_writer import InferenceLogWriter
from gateway.protocol.compat import NumpyEncoder
from gateway.serving.outcome import Outcome
from gateway.serving.prediction import Part

# Label values for requests refused before an endpoint or variant was known: labels stay bounded.
UNKNOWN = "_unknown"
NONE = "_none"
CLIENT_REQUEST_ID_HEADER = "x-client-request-id"
# What a failed attempt that falls back answers: a model's error, its worker's 503, a timeout.
FALLBACK_STATUSES = ("500", "503", "504")


class InFlight:
    """One request counted in the in-flight gauge until `release()`."""

    __slots__ = ("_level",)

    def __init__(self, level: metrics.Level | None) -> None:
        self._level = level
        if level is not None:
            level.add(1)

    def release(self) -> None:
        """The request is answered."""
        if self._level is not None:
            self._level.add(-1)


class Accountant:
    """Counts every outcome and hands its inference-log records to the writer, never blocking."""

    def __init__(self, config: GatewayConfig, writer: InferenceLogWriter | None) -> None:
        self._config = config
        self._settings = config.inference_log
        self._writer = writer
        self._metrics = config.metrics.enabled
        secret = config.inference_log.user_key_secret
        self._secret = secret.encode() if secret else None
        if self._metrics:
            _export_zeros(config)

    def in_flight(self, endpoint: str | None) -> InFlight:
        """Count a request as in flight on its endpoint until it is released."""
        return InFlight(metrics.in_flight(self._label(endpoint)) if self._metrics else None)

    def record(self, outcome: Outcome) -> None:
        """Count the outcome once for each variant that had a part in it, and log one record each.

        A failed attempt that the endpoint's fallback variant answered for is logged too, and
        counted in `gateway_fallback_total`: the request itself is counted once, as answered.
        """
        if outcome.attempt is not None:
            self._count_attempt(outcome.attempt)
            self._log(outcome.attempt)
        self._count(
            outcome.invocation.endpoint,
            outcome.parts,
            outcome.status_code,
            outcome.duration,
            outcome.error,
        )
        self._log(outcome)

    def count_refusal(self, endpoint: str | None, error: GatewayError) -> None:
        """Count a request refused before it was read: no variant, no record (see `record`)."""
        self._count(endpoint, (), error.status_code, 0.0, error)

    def _count(
        self,
        endpoint: str | None,
        parts: tuple[Part, ...],
        status: int,
        duration: float,
        error: GatewayError | None,
    ) -> None:
        """The metrics of one request: once for each variant with a part in it, and its shedding."""
        if not self._metrics:
            return
        label = self._label(endpoint)
        for part in parts or (None,):
            _count(label, part, status, duration)
        if isinstance(error, ShedError):
            metrics.SHED.labels(label, error.reason).inc()

    def _count_attempt(self, attempt: Outcome) -> None:
        if not self._metrics or attempt.decision is None or attempt.decision.variant is None:
            return
        label = self._label(attempt.invocation.endpoint)
        metrics.FALLBACK.labels(label, attempt.decision.variant, str(attempt.status_code)).inc()
        if isinstance(attempt.error, ShedError):
            metrics.SHED.labels(label, attempt.error.reason).inc()

    def _log(self, outcome: Outcome) -> None:
        """One inference-log record for each variant that had a part in the outcome."""
        if outcome.endpoint is None or not self._sampled(outcome):
            return
        for part in outcome.parts or (None,):
            self._submit(partial(self._answered_record, outcome, part))

    def _answered_record(self, outcome: Outcome, part: Part | None) -> dict[str, Any]:
        """The record of one variant's part in an answered (or refused) request."""
        response = outcome.body
        if response is not None and part is not None and part.predictions is not None:
            # Rows were split: each variant's record holds the predictions of its own rows.
            response = json.dumps({"predictions": part.predictions}, cls=NumpyEncoder).encode()
        return self._record(
            outcome,
            part,
            outcome.decision.routing if outcome.decision else None,
            outcome.status_code,
            response,
            None if outcome.error is None else outcome.error.message,
        )

    def record_shadow(
        self, outcome: Outcome, part: Part | None, body: bytes | None, error: GatewayError | None
    ) -> None:
        """The record of one shadow prediction of an answered request."""
        if outcome.endpoint is None or not self._sampled(outcome):
            return
        status = 200 if error is None else error.status_code
        message = None if error is None else error.message
        self._submit(partial(self._record, outcome, part, Routing.SHADOW, status, body, message))

    def _submit(self, record: Callable[[], dict[str, Any]]) -> None:
        """Queue a record's builder: it runs on the writer's thread, so that reading the outcome,
        hashing the user key and encoding bodies cost the request path nothing."""
        assert self._writer is not None
        self._writer.submit(record)

    def _sampled(self, outcome: Outcome) -> bool:
        return self._writer is not None and should_sample(
            outcome.invocation.request_id, self._settings.sample_rate
        )

    def _record(
        self,
        outcome: Outcome,
        part: Part | None,
        routing: Routing | None,
        status_code: int,
        response: bytes | None,
        error: str | None,
    ) -> dict[str, Any]:
        """One inference-log record (on the writer's thread)."""
        invocation, decision, endpoint = outcome.invocation, outcome.decision, outcome.endpoint
        assert endpoint is not None
        user_key = decision.user_key if decision else None
        shadow = routing is Routing.SHADOW
        seconds = (part.predict_seconds or 0.0) if shadow and part else outcome.duration
        return build_record(
            request_id=invocation.request_id,
            timestamp=invocation.wall,
            endpoint=endpoint.name,
            model=endpoint.model,
            variant=part.variant if part else None,
            model_version=part.model_version if part else None,
            routing=routing,
            split=decision.split if decision else None,
            user_key_hash=(
                user_key_hash(user_key, self._secret)
                if user_key is not None and self._secret is not None
                else None
            ),
            requester=invocation.requester,
            client_request_id=invocation.headers.get(CLIENT_REQUEST_ID_HEADER),
            status_code=status_code,
            duration_ms=seconds * 1000,
            request_body=invocation.body,
            content_type=invocation.content_type,
            response_body=response,
            error=error,
            max_payload_bytes=self._settings.max_payload_bytes,
            trace_id=outcome.trace_id,
        )

    def _label(self, endpoint: str | None) -> str:
        if endpoint is None:
            return self._config.endpoints[0].name
        return endpoint if self._config.endpoint(endpoint) is not None else UNKNOWN


def _export_zeros(config: GatewayConfig) -> None:
    """Export the shedding and fallback counters at 0 from the start: Prometheus sees no increase
    in a counter series that first appears at 1, so an alert on increase() would miss the first."""
    for endpoint in config.endpoints:
        for reason in get_args(ShedReason):
            metrics.SHED.labels(endpoint.name, reason)
        if endpoint.fallback is None:
            continue
        for variant in endpoint.variants:
            if variant.variant_name != endpoint.fallback:
                for status in FALLBACK_STATUSES:
                    metrics.FALLBACK.labels(endpoint.name, variant.variant_name, status)


def _count(label: str, part: Part | None, status: int, duration: float) -> None:
    """Count one variant's part in a request (`_none` when no variant had one)."""
    variant = part.variant if part else NONE
    version = part.model_version if part else NONE
    meters = metrics.request_meters(label, variant, version, status)
    meters.answered()
    meters.duration(duration)
    if part is None:
        return
    if part.predict_seconds is not None:
        meters.predict_duration(part.predict_seconds)
        meters.rows(part.rows)
    if part.queue_seconds is not None:
        meters.queue_duration(part.queue_seconds)
