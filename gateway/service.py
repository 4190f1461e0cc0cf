"""One invocation, protocol-agnostic: choose a variant, parse and predict off the loop, encode."""

import asyncio
import logging
import random
from collections.abc import Mapping
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from gateway import payload
from gateway.config import Endpoint, GatewayConfig
from gateway.errors import GatewayError
from gateway.model_pool import ModelPool
from gateway.registry import LoadedModel
from gateway.routing import Routing, choose_random, choose_sticky

logger = logging.getLogger(__name__)

FORCE_HEADER = "x-gateway-variant"


@dataclass(frozen=True)
class Decision:
    """Which variant serves a request, and why."""

    variant: str
    routing: Routing
    user_key: str | None = None


@dataclass(frozen=True)
class Outcome:
    """A successful invocation: the response body and what served it."""

    body: bytes
    decision: Decision
    model_version: str
    rows: int


class InvocationService:
    """Serves invocations of the configured endpoints from the models in the pool."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: ModelPool,
        executor: Executor,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._pool = pool
        self._executor = executor
        self._rng = rng or random.Random()

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
                return Decision(
                    choose_sticky(endpoint.name, user_key, weights), Routing.STICKY, user_key
                )
        return Decision(choose_random(weights, self._rng), Routing.RANDOM)

    async def invoke(
        self, endpoint: Endpoint, body: bytes, content_type: str | None, headers: Mapping[str, str]
    ) -> Outcome:
        """Answer one request on an endpoint; raises GatewayError for anything a client did wrong."""
        body_format = payload.parse_media_type(content_type)
        decision = self.decide(endpoint, headers)
        model = self._pool.get(endpoint.name, decision.variant)
        if model is None:
            raise GatewayError(
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{endpoint.name}' variant '{decision.variant}' is still loading.",
            )
        loop = asyncio.get_running_loop()
        body_out, rows = await loop.run_in_executor(
            self._executor, _predict, model, body_format, body
        )
        return Outcome(body_out, decision, model.version.version, rows)


def _predict(model: LoadedModel, body_format: payload.Format, body: bytes) -> tuple[bytes, int]:
    """Parse, predict and encode: the blocking part of an invocation, run in a worker thread."""
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
    return payload.encode_predictions(raw, model_input.unwrapped), _row_count(model_input.data)


def _is_mlflow(exc: Exception) -> bool:
    return type(exc).__module__.startswith("mlflow")


def _row_count(data: Any) -> int:
    try:
        return len(data)
    except TypeError:
        return 1
