"""Shadow traffic: a copy of each answered request predicted by shadow aliases, off the response path.

Shadow predictions run on threads of their own, never the serving threads, at most
`shadow_concurrency` at once per endpoint. A slot is taken when the copy is accepted, in the same
call that answers the request, so the bound holds even for a whole batch answered in one turn of
the loop: a copy that finds no free slot is dropped and counted, never queued. Each shadow answer
is compared row by row with what the client was given, and recorded.
"""

import asyncio
import json
import logging
from concurrent.futures import Executor

from gateway.core.errors import GatewayError, internal_error
from gateway.observe import metrics
from gateway.protocol import payload
from gateway.serving.accounting import Accountant
from gateway.serving.outcome import Outcome
from gateway.serving.pool import ModelPool
from gateway.serving.prediction import Prediction, count_differences, predict_one
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)


class ShadowRunner:
    """Runs shadow copies of answered requests with bounded concurrency per endpoint."""

    def __init__(
        self,
        pool: ModelPool,
        executor: Executor,
        accountant: Accountant,
        *,
        count: bool = True,
    ) -> None:
        self._pool = pool
        self._executor = executor
        self._accountant = accountant
        self._count = count
        self._busy: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def mirror(self, outcome: Outcome, body_format: payload.Format) -> None:
        """Start the shadow predictions of an answered request; never waits."""
        endpoint = outcome.endpoint
        assert endpoint is not None
        assert outcome.body is not None
        for alias in endpoint.shadow:
            model = self._pool.get(endpoint.name, alias)
            busy = self._busy.get(endpoint.name, 0)
            if model is None or busy >= endpoint.shadow_concurrency:
                if self._count:
                    metrics.SHADOW_DROPPED.labels(endpoint.name, alias).inc()
                continue
            self._busy[endpoint.name] = busy + 1  # reserved now, before the task first runs
            task = asyncio.create_task(self._run(outcome, alias, model, body_format))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(
        self, outcome: Outcome, alias: str, model: LoadedModel, body_format: payload.Format
    ) -> None:
        assert outcome.endpoint is not None
        assert outcome.body is not None
        endpoint = outcome.endpoint.name
        try:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(
                self._executor, _shadow_predict, alias, model, body_format, outcome
            )
        except RuntimeError:  # the executor is shut down: the gateway is stopping
            return
        finally:
            self._busy[endpoint] -= 1
        prediction, error, compared, differing = result
        if self._count:
            version = model.version.version
            metrics.SHADOW_ROWS_COMPARED.labels(endpoint, alias, version).inc(compared)
            metrics.SHADOW_ROWS_DIFFERING.labels(endpoint, alias, version).inc(differing)
            if error is not None:
                metrics.SHADOW_ERRORS.labels(endpoint, alias, version).inc()
        part = prediction.parts[0] if prediction else None
        self._accountant.record_shadow(
            outcome, part, prediction.body if prediction else None, error
        )

    async def drain(self, grace_seconds: float) -> None:
        """Wait for running shadow predictions, then cancel what is left."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=grace_seconds)
        for task in pending:
            task.cancel()


_ShadowResult = tuple[Prediction | None, GatewayError | None, int, int]


def _shadow_predict(
    alias: str, model: LoadedModel, body_format: payload.Format, outcome: Outcome
) -> _ShadowResult:
    """The shadow's prediction or error, and the rows compared with the served answer and differing."""
    assert outcome.body is not None
    try:
        prediction = predict_one(alias, model, body_format, outcome.invocation.body)
    except GatewayError as error:
        return None, error, 0, 0
    except Exception:  # a shadow model's bug must never reach the serving path
        logger.exception("shadow %s failed", model.version.uri)
        return None, internal_error(), 0, 0
    try:
        served = json.loads(outcome.body)["predictions"]
        shadow = json.loads(prediction.body)["predictions"]
    except (ValueError, KeyError, TypeError):
        return prediction, None, 0, 0
    compared, differing = count_differences(_rows(served), _rows(shadow))
    return prediction, None, compared, differing


def _rows(predictions: object) -> list[object]:
    return predictions if isinstance(predictions, list) else [predictions]
