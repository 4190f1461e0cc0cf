"""What each answered invocation leaves behind: its metrics and its inference-log records."""

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from mlflow.utils.proto_json_utils import NumpyEncoder

from gateway.core.config import Endpoint, GatewayConfig
from gateway.core.record import build_record, should_sample, user_key_hash
from gateway.core.routing import Routing
from gateway.observe import metrics
from gateway.observe.log_writer import InferenceLogWriter
from gateway.serving.pool import ModelPool
from gateway.serving.prediction import Prediction, Served
from gateway.serving.shadow import ShadowResult

# Label values for requests refused before an endpoint or variant was known: labels stay bounded.
UNKNOWN = "_unknown"
NONE = "_none"


@dataclass(frozen=True)
class Answer:
    """An answered invocation, as the inference log needs it."""

    request_id: str
    wall: float
    endpoint: Endpoint
    routing: Routing | None
    user_key: str | None
    split: Mapping[str, int] | None
    client_request_id: str | None
    status_code: int
    reply_body: bytes
    duration: float
    body: bytes
    content_type: str | None


def count(
    label: str, served: list[Served], status: int, duration: float, prediction: Prediction | None
) -> None:
    """Count a request once for each variant that served it (once as `_none` if none did)."""
    parts: list[Served | None] = [*served] or [None]
    for part in parts:
        variant = part.variant if part else NONE
        version = part.model.version.version if part else NONE
        meters = metrics.request_meters(label, variant, version, status)
        meters.answered()
        meters.duration(duration)
        if prediction is not None and part is not None:
            meters.predict_duration(prediction.seconds)
            meters.rows(part.rows)


class Accountant:
    """Hands inference-log records of answered requests to the writer, sampled, never blocking."""

    def __init__(
        self, config: GatewayConfig, pool: ModelPool, writer: InferenceLogWriter | None
    ) -> None:
        self._settings = config.inference_log
        self._pool = pool
        self._writer = writer
        self._metrics = config.metrics.enabled
        secret = config.inference_log.user_key_secret
        self._secret = secret.encode() if secret else None

    def log(self, answer: Answer, served: list[Served]) -> None:
        """One record a variant that served the request (one, unless its rows were split)."""
        if self._writer is None or not should_sample(answer.request_id, self._settings.sample_rate):
            return
        ok = answer.status_code == 200
        error = None if ok else _error_message(answer.reply_body)
        parts: list[Served | None] = [*served] or [None]
        for part in parts:
            response: bytes | None = answer.reply_body if ok else None
            if ok and part is not None and part.predictions is not None:
                # Rows were split: each variant's record holds the predictions of its own rows.
                response = json.dumps({"predictions": part.predictions}, cls=NumpyEncoder).encode()
            self._writer.submit(
                self._record(
                    answer,
                    part.variant if part else None,
                    part.model.version.version if part else None,
                    answer.routing,
                    answer.status_code,
                    response,
                    error,
                    answer.duration,
                )
            )
        if self._metrics:
            metrics.LOG_QUEUE_DEPTH.set(self._writer.queue_depth())

    def log_shadow(self, answer: Answer, result: ShadowResult) -> None:
        """The record of a shadow prediction of an answered request."""
        if self._writer is None or not should_sample(answer.request_id, self._settings.sample_rate):
            return
        model = self._pool.get(answer.endpoint.name, result.alias)
        prediction, error = result.prediction, result.error
        self._writer.submit(
            self._record(
                answer,
                result.alias,
                model.version.version if model else None,
                Routing.SHADOW,
                200 if error is None else error.status_code,
                prediction.body if prediction else None,
                error.message if error else None,
                prediction.seconds if prediction else 0.0,
            )
        )

    def _record(
        self,
        answer: Answer,
        variant: str | None,
        version: str | None,
        routing: Routing | None,
        status_code: int,
        response: bytes | None,
        error: str | None,
        seconds: float,
    ) -> Callable[[], dict[str, Any]]:
        """A record builder: it runs on the writer's thread, so bodies cost the request path nothing."""
        hashed = (
            user_key_hash(answer.user_key, self._secret)
            if answer.user_key is not None and self._secret is not None
            else None
        )
        return partial(
            build_record,
            request_id=answer.request_id,
            timestamp=answer.wall,
            endpoint=answer.endpoint.name,
            model=answer.endpoint.model,
            variant=variant,
            model_version=version,
            routing=routing,
            split=answer.split,
            user_key_hash=hashed,
            requester=None,
            client_request_id=answer.client_request_id,
            status_code=status_code,
            duration_ms=seconds * 1000,
            request_body=answer.body,
            content_type=answer.content_type,
            response_body=response,
            error=error,
            max_payload_bytes=self._settings.max_payload_bytes,
        )


def _error_message(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return None
