"""Shadow traffic: a copy of each answered request predicted by shadow aliases, off the response path.

Shadow predictions run on threads of their own, never the serving threads, at most
`shadow_concurrency` at once per endpoint; a copy that finds no free slot is dropped and counted,
never queued. Each shadow answer is compared row by row with what the client was given.
"""

import asyncio
import json
import logging
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from gateway.core.config import Endpoint
from gateway.core.errors import GatewayError
from gateway.observe import metrics
from gateway.protocol import payload
from gateway.serving.pool import ModelPool
from gateway.serving.prediction import Prediction, count_differences, predict_one
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShadowResult:
    """One shadow alias's answer to a copied request."""

    alias: str
    prediction: Prediction | None
    error: GatewayError | None
    compared: int
    differing: int


Report = Callable[[ShadowResult], None]


class ShadowRunner:
    """Runs shadow copies of answered requests with bounded concurrency per endpoint."""

    def __init__(self, pool: ModelPool, executor: Executor, *, count: bool = True) -> None:
        self._pool = pool
        self._executor = executor
        self._count = count
        self._slots: dict[str, asyncio.Semaphore] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(
        self,
        endpoint: Endpoint,
        body_format: payload.Format,
        body: bytes,
        served_body: bytes,
        report: Report,
    ) -> None:
        """Start shadow predictions of a request whose answer is `served_body`; never waits."""
        slots = self._slots.setdefault(
            endpoint.name, asyncio.Semaphore(endpoint.shadow_concurrency)
        )
        for alias in endpoint.shadow:
            model = self._pool.get(endpoint.name, alias)
            if model is None or slots.locked():
                if self._count:
                    metrics.SHADOW_DROPPED.labels(endpoint.name, alias).inc()
                continue
            task = asyncio.create_task(
                self._run(endpoint.name, alias, slots, body_format, body, served_body, report)
            )
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        endpoint: str,
        alias: str,
        slots: asyncio.Semaphore,
        body_format: payload.Format,
        body: bytes,
        served_body: bytes,
        report: Report,
    ) -> None:
        async with slots:
            model = self._pool.get(endpoint, alias)
            if model is None:
                return
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._executor, _shadow_predict, alias, model, body_format, body, served_body
            )
        if self._count:
            version = model.version.version
            metrics.SHADOW_ROWS_COMPARED.labels(endpoint, alias, version).inc(result.compared)
            metrics.SHADOW_ROWS_DIFFERING.labels(endpoint, alias, version).inc(result.differing)
            if result.error is not None:
                metrics.SHADOW_ERRORS.labels(endpoint, alias, version).inc()
        report(result)

    async def drain(self, timeout: float) -> None:
        """Wait for running shadow predictions, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout)
        for task in pending:
            task.cancel()


def _shadow_predict(
    alias: str, model: LoadedModel, body_format: payload.Format, body: bytes, served_body: bytes
) -> ShadowResult:
    try:
        prediction = predict_one(alias, model, body_format, body)
    except GatewayError as error:
        return ShadowResult(alias, None, error, 0, 0)
    except Exception:  # a shadow model's bug must never reach the serving path
        logger.exception("shadow %s failed", model.version.uri)
        return ShadowResult(
            alias, None, GatewayError("INTERNAL_ERROR", "shadow prediction failed"), 0, 0
        )
    try:
        served = json.loads(served_body)["predictions"]
        shadow = json.loads(prediction.body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return ShadowResult(alias, prediction, None, 0, 0)
    compared, differing = count_differences(_rows(served), _rows(shadow))
    return ShadowResult(alias, prediction, None, compared, differing)


def _rows(predictions: object) -> list[object]:
    return predictions if isinstance(predictions, list) else [predictions]
