"""One invocation, protocol-agnostic: route, parse and predict off the loop, answer, account for it."""

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from typing import Any

from gateway import metrics, payload
from gateway.config import Endpoint, GatewayConfig
from gateway.errors import GatewayError
from gateway.inference_log import InferenceLogWriter
from gateway.inference_record import build_record, should_sample, user_key_hash
from gateway.model_pool import ModelPool
from gateway.registry import LoadedModel
from gateway.routing import Routing, choose_random, choose_sticky

logger = logging.getLogger(__name__)

FORCE_HEADER = "x-gateway-variant"
# The metrics label of requests to an endpoint name that is not configured: label values stay bounded.
UNKNOWN = "_unknown"
NONE = "_none"


@dataclass(frozen=True)
class Decision:
    """Which variant serves a request, and why."""

    variant: str
    routing: Routing
    user_key: str | None = None


@dataclass(frozen=True)
class Reply:
    """What to answer: status, JSON body and headers."""

    status_code: int
    body: bytes
    headers: dict[str, str]


class InvocationService:
    """Serves invocations of the configured endpoints from the models in the pool."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: ModelPool,
        executor: Executor,
        *,
        log_writer: InferenceLogWriter | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._pool = pool
        self._executor = executor
        self._log_writer = log_writer
        self._rng = rng or random.Random()
        self._clock = clock
        secret = config.inference_log.user_key_secret
        self._user_key_secret = secret.encode() if secret else None
        self._metrics = config.metrics.enabled

    def endpoint(self, name: str | None) -> Endpoint:
        """The named endpoint, or the first one for plain `/invocations`; 404 if there is none."""
        if name is None:
            return self._config.endpoints[0]
        endpoint = self._config.endpoint(name)
        if endpoint is None:
            known = ", ".join(endpoint.name for endpoint in self._config.endpoints)
            raise GatewayError(
                "ENDPOINT_NOT_FOUND", f"No endpoint named '{name}'. Endpoints: {known}."
            )
        return endpoint

    def decide(self, endpoint: Endpoint, headers: Mapping[str, str]) -> Decision:
        """Pick the variant for a request from its headers: forced, sticky or a weighted draw."""
        names = [variant.variant_name for variant in endpoint.variants]
        forced = headers.get(FORCE_HEADER)
        if forced is not None:
            if not endpoint.allow_override:
                raise GatewayError(
                    "INVALID_PARAMETER_VALUE",
                    f"Endpoint '{endpoint.name}' does not allow choosing a variant with "
                    f"the {FORCE_HEADER} header.",
                )
            if forced not in names:
                raise GatewayError(
                    "INVALID_PARAMETER_VALUE",
                    f"Unknown variant '{forced[:64]}' in the {FORCE_HEADER} header; "
                    f"endpoint '{endpoint.name}' has: {', '.join(names)}.",
                )
            return Decision(forced, Routing.FORCED)
        weights = {variant.variant_name: variant.weight for variant in endpoint.variants}
        if endpoint.sticky is not None and endpoint.sticky.header is not None:
            user_key = headers.get(endpoint.sticky.header.lower())
            if user_key:
                variant = choose_sticky(endpoint.name, user_key, weights)
                return Decision(variant, Routing.STICKY, user_key)
        return Decision(choose_random(weights, self._rng), Routing.RANDOM)

    async def handle(
        self,
        endpoint_name: str | None,
        read_body: Callable[[], Awaitable[bytes]],
        content_type: str | None,
        headers: Mapping[str, str],
        request_id: str,
    ) -> Reply:
        """Answer one invocation, never raising for a client's mistake; record metrics and log."""
        started, wall = time.perf_counter(), self._clock()
        endpoint: Endpoint | None = None
        decision: Decision | None = None
        model: LoadedModel | None = None
        body = b""
        label = (
            UNKNOWN
            if endpoint_name is not None and self._config.endpoint(endpoint_name) is None
            else (endpoint_name or self._config.endpoints[0].name)
        )
        if self._metrics:
            metrics.IN_FLIGHT.labels(label).inc()
        try:
            endpoint = self.endpoint(endpoint_name)
            body = await read_body()
            body_format = payload.parse_media_type(content_type)
            decision = self.decide(endpoint, headers)
            model = self._model(endpoint, decision.variant)
            reply_body, rows, predict_seconds = await self._predict(model, body_format, body)
            reply = Reply(200, reply_body, _served_headers(request_id, decision, model))
        except GatewayError as error:
            rows, predict_seconds = 0, None
            reply = Reply(
                error.status_code,
                json.dumps(error.to_dict()).encode(),
                _served_headers(request_id, decision, model),
            )
        finally:
            if self._metrics:
                metrics.IN_FLIGHT.labels(label).dec()
        duration = time.perf_counter() - started
        variant = decision.variant if decision else NONE
        version = model.version.version if model else NONE
        if self._metrics:
            metrics.REQUESTS.labels(label, variant, version, str(reply.status_code)).inc()
            metrics.REQUEST_DURATION.labels(label, variant).observe(duration)
            if predict_seconds is not None:
                metrics.PREDICT_DURATION.labels(label, variant, version).observe(predict_seconds)
                metrics.ROWS.labels(label, variant, version).inc(rows)
        if self._log_writer is not None and endpoint is not None:
            self._log(
                request_id, wall, endpoint, decision, model, reply, duration, body, content_type
            )
        return reply

    def _model(self, endpoint: Endpoint, variant: str) -> LoadedModel:
        model = self._pool.get(endpoint.name, variant)
        if model is None:
            raise GatewayError(
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{endpoint.name}' variant '{variant}' is still loading.",
            )
        return model

    async def _predict(
        self, model: LoadedModel, body_format: payload.Format, body: bytes
    ) -> tuple[bytes, int, float]:
        loop = asyncio.get_running_loop()
        work = loop.run_in_executor(self._executor, _predict, model, body_format, body)
        try:
            return await asyncio.wait_for(work, self._config.request_timeout_seconds)
        except TimeoutError:
            # The thread cannot be interrupted; it finishes and its result is discarded.
            raise GatewayError(
                "DEADLINE_EXCEEDED",
                f"Prediction took longer than {self._config.request_timeout_seconds:g} seconds.",
            ) from None

    def _log(
        self,
        request_id: str,
        wall: float,
        endpoint: Endpoint,
        decision: Decision | None,
        model: LoadedModel | None,
        reply: Reply,
        duration: float,
        body: bytes,
        content_type: str | None,
    ) -> None:
        settings = self._config.inference_log
        if self._log_writer is None or not should_sample(request_id, settings.sample_rate):
            return
        user_key = decision.user_key if decision else None
        hashed = (
            user_key_hash(user_key, self._user_key_secret)
            if user_key is not None and self._user_key_secret is not None
            else None
        )
        ok = reply.status_code == 200
        # Built on the writer's thread: decoding and cutting bodies cost the request path nothing.
        self._log_writer.submit(
            partial(
                build_record,
                request_id=request_id,
                timestamp=wall,
                endpoint=endpoint.name,
                model=endpoint.model,
                variant=decision.variant if decision else None,
                model_version=model.version.version if model else None,
                routing=decision.routing.value if decision else None,
                user_key_hash=hashed,
                status_code=reply.status_code,
                duration_ms=duration * 1000,
                request_body=body,
                content_type=content_type,
                response_body=reply.body if ok else None,
                error=None if ok else _error_message(reply.body),
                max_payload_bytes=settings.max_payload_bytes,
            )
        )
        if self._metrics:
            metrics.LOG_QUEUE_DEPTH.set(self._log_writer.queue_depth())


def _served_headers(
    request_id: str, decision: Decision | None, model: LoadedModel | None
) -> dict[str, str]:
    headers = {"x-request-id": request_id}
    if decision is not None and model is not None:
        headers["x-gateway-variant"] = decision.variant
        headers["x-gateway-model-version"] = model.version.version
    return headers


def _error_message(body: bytes) -> str | None:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return None


def _predict(
    model: LoadedModel, body_format: payload.Format, body: bytes
) -> tuple[bytes, int, float]:
    """Parse, predict and encode: the blocking part of an invocation, run in a worker thread."""
    started = time.perf_counter()
    if body_format is payload.Format.JSON:
        model_input = payload.parse_json(
            payload.decode_json(body), model.metadata, model.input_schema
        )
    elif body_format is payload.Format.CSV:
        model_input = payload.parse_csv(body, model.input_schema)
    else:
        model_input = payload.parse_parquet(body)
    try:
        raw = model.pyfunc.predict(model_input.data, params=model_input.params)
    except Exception as exc:
        error = payload.predict_error(exc)
        logger.warning(
            "predict failed on %s: %s",
            model.version.uri,
            error.message,
            exc_info=not _is_mlflow(exc),
        )
        raise error from exc
    encoded = payload.encode_predictions(raw, model_input.unwrapped)
    return encoded, _row_count(model_input.data), time.perf_counter() - started


def _is_mlflow(exc: Exception) -> bool:
    return type(exc).__module__.startswith("mlflow")


def _row_count(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 1
