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

from gateway.core.config import Endpoint, GatewayConfig
from gateway.core.errors import GatewayError
from gateway.core.routing import Routing, choose_random, choose_sticky
from gateway.observe import metrics
from gateway.observe.log_writer import InferenceLogWriter
from gateway.protocol import payload
from gateway.serving.accounting import UNKNOWN, Accountant, Answer, count
from gateway.serving.batching import Batcher
from gateway.serving.pool import ModelPool
from gateway.serving.prediction import Prediction, Served, predict_by_row, predict_one
from gateway.serving.registry import LoadedModel
from gateway.serving.shadow import ShadowRunner

logger = logging.getLogger(__name__)

FORCE_HEADER = "x-gateway-variant"
CLIENT_REQUEST_ID_HEADER = "x-client-request-id"


@dataclass(frozen=True)
class Decision:
    """Which variant serves a request, and why; no variant when each row is routed on its own."""

    variant: str | None
    routing: Routing
    split: Mapping[str, int]
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
        shadow: ShadowRunner | None = None,
        log_writer: InferenceLogWriter | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._pool = pool
        self._executor = executor
        self._shadow = shadow
        self._accountant = Accountant(config, pool, log_writer)
        self._batchers: dict[tuple[str, str], Batcher] = {}
        self._rng = rng or random.Random()
        self._clock = clock
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
        """Pick the variant for a request: forced, sticky by header, per row, or a weighted draw."""
        # The live weights are replaced whole when they change: this is the split of the decision.
        split = self._pool.weights(endpoint.name)
        forced = headers.get(FORCE_HEADER)
        if forced is not None:
            return Decision(self._forced(endpoint, forced), Routing.FORCED, split)
        sticky = endpoint.sticky
        if sticky is not None and sticky.field is not None:
            return Decision(None, Routing.STICKY, split)
        if sticky is not None and sticky.header is not None:
            user_key = headers.get(sticky.header.lower())
            if user_key:
                variant = choose_sticky(endpoint.name, user_key, split)
                return Decision(variant, Routing.STICKY, split, user_key)
        return Decision(choose_random(split, self._rng), Routing.RANDOM, split)

    def _forced(self, endpoint: Endpoint, forced: str) -> str:
        names = list(endpoint.weights)
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
        return forced

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
        prediction: Prediction | None = None
        body = b""
        label = self._label(endpoint_name)
        if self._metrics:
            metrics.in_flight(label).inc()
        try:
            endpoint = self.endpoint(endpoint_name)
            body = await read_body()
            body_format = payload.parse_media_type(content_type)
            decision = self.decide(endpoint, headers)
            prediction = await self._run(endpoint, decision, body_format, body)
            reply = Reply(200, prediction.body, _served_headers(request_id, prediction.served))
        except GatewayError as error:
            served = self._attempted(endpoint, decision)
            reply = Reply(
                error.status_code,
                json.dumps(error.to_dict()).encode(),
                _served_headers(request_id, served),
            )
        finally:
            if self._metrics:
                metrics.in_flight(label).dec()
        duration = time.perf_counter() - started
        served = prediction.served if prediction else self._attempted(endpoint, decision)
        if self._metrics:
            count(label, served, reply.status_code, duration, prediction)
        if endpoint is not None:
            answer = Answer(
                request_id=request_id,
                wall=wall,
                endpoint=endpoint,
                routing=decision.routing if decision else None,
                user_key=decision.user_key if decision else None,
                split=decision.split if decision else None,
                client_request_id=headers.get(CLIENT_REQUEST_ID_HEADER),
                status_code=reply.status_code,
                reply_body=reply.body,
                duration=duration,
                body=body,
                content_type=content_type,
            )
            self._accountant.log(answer, served)
            if prediction is not None and self._shadow is not None and endpoint.shadow:
                report = partial(self._accountant.log_shadow, answer)
                self._shadow.mirror(endpoint, body_format, body, prediction.body, report)
        return reply

    async def _run(
        self, endpoint: Endpoint, decision: Decision, body_format: payload.Format, body: bytes
    ) -> Prediction:
        """Predict in a worker thread, within the request timeout."""
        if decision.variant is not None and endpoint.batching is not None:
            model = self._model(endpoint, decision.variant)
            batched = self._batched(endpoint, decision.variant, model, body_format, body)
            return await self._within_timeout(batched)
        if decision.variant is not None:
            work = partial(
                predict_one,
                decision.variant,
                self._model(endpoint, decision.variant),
                body_format,
                body,
            )
        else:
            assert endpoint.sticky is not None
            assert endpoint.sticky.field is not None
            live = self._pool.weights(endpoint.name)
            weights = {name: weight for name, weight in live.items() if weight > 0}
            models = {name: self._model(endpoint, name) for name in weights}
            work = partial(
                predict_by_row,
                endpoint.name,
                endpoint.sticky.field,
                weights,
                models,
                body_format,
                body,
                self._rng,
            )
        loop = asyncio.get_running_loop()
        return await self._within_timeout(loop.run_in_executor(self._executor, work))

    async def _batched(
        self,
        endpoint: Endpoint,
        variant: str,
        model: LoadedModel,
        body_format: payload.Format,
        body: bytes,
    ) -> Prediction:
        """Parse and predict together with concurrent requests; a bad request fails alone."""
        started = time.perf_counter()
        batcher = self._batchers.get((endpoint.name, variant))
        if batcher is None or batcher.model is not model:
            assert endpoint.batching is not None
            # A swapped version gets a batcher of its own; the old one ends with its last batch.
            labels = (endpoint.name, variant) if self._metrics else None
            batcher = Batcher(model, self._executor, endpoint.batching, labels)
            self._batchers[(endpoint.name, variant)] = batcher
        batched = await batcher.predict(body_format, body)
        served = Served(variant, model, batched.rows, None)
        return Prediction(batched.body, [served], time.perf_counter() - started)

    async def _within_timeout(self, work: Awaitable[Prediction]) -> Prediction:
        # asyncio.timeout cancels this task's await on expiry; wait_for would wrap `work` in a
        # task of its own, one more task on the loop for every request.
        try:
            async with asyncio.timeout(self._config.request_timeout_seconds):
                return await work
        except TimeoutError:
            # The thread cannot be interrupted; it finishes and its result is discarded.
            raise GatewayError(
                "DEADLINE_EXCEEDED",
                f"Prediction took longer than {self._config.request_timeout_seconds:g} seconds.",
            ) from None

    def _model(self, endpoint: Endpoint, variant: str) -> LoadedModel:
        model = self._pool.get(endpoint.name, variant)
        if model is None:
            raise GatewayError(
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{endpoint.name}' variant '{variant}' is still loading.",
            )
        return model

    def _attempted(self, endpoint: Endpoint | None, decision: Decision | None) -> list[Served]:
        """What a failed request was routed to, for its headers, metrics and log record."""
        if endpoint is None or decision is None or decision.variant is None:
            return []
        model = self._pool.get(endpoint.name, decision.variant)
        return [] if model is None else [Served(decision.variant, model, 0, None)]

    def _label(self, endpoint_name: str | None) -> str:
        if endpoint_name is None:
            return self._config.endpoints[0].name
        return endpoint_name if self._config.endpoint(endpoint_name) is not None else UNKNOWN


def _served_headers(request_id: str, served: list[Served]) -> dict[str, str]:
    """The response headers; a request whose rows were split names every variant, comma-separated."""
    headers = {"x-request-id": request_id}
    if served:
        headers["x-gateway-variant"] = ",".join(part.variant for part in served)
        headers["x-gateway-model-version"] = ",".join(part.model.version.version for part in served)
    return headers
