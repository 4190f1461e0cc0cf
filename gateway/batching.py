"""Adaptive batching: concurrent requests for one model version merged into one `predict` call.

A request that arrives while no batch of its version is being predicted is predicted at once, so
a request alone never waits. Requests that arrive while a batch is being predicted queue up and
go together in the next one (up to `max_batch_size` rows); a batch of several requests that is not
full may wait `max_wait_ms` for more. Only requests that would be predicted the same way are
merged: DataFrames with the same columns and dtypes and the same params. If a merged `predict`
fails, each request of the batch is predicted alone, so a bad request fails alone and its
neighbours get exactly what they would have got by themselves.
"""

import asyncio
import json
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from gateway import metrics, payload
from gateway.config import Batching
from gateway.errors import GatewayError
from gateway.prediction import per_row, predict_parsed
from gateway.registry import LoadedModel

logger = logging.getLogger(__name__)


@dataclass
class _Waiting:
    model_input: payload.ModelInput
    future: asyncio.Future[bytes]
    key: tuple[Any, ...] = field(default=())


def batch_key(model_input: payload.ModelInput) -> tuple[Any, ...] | None:
    """What requests must share to be merged; None for input that is never merged."""
    data = model_input.data
    if model_input.unwrapped or not isinstance(data, pd.DataFrame) or len(data) == 0:
        return None
    if not isinstance(data.index, pd.RangeIndex):
        return None
    params = json.dumps(model_input.params, sort_keys=True, default=str)
    return (tuple(data.columns), tuple(str(dtype) for dtype in data.dtypes), params)


def take_batch(waiting: "deque[_Waiting]", max_rows: int) -> list[_Waiting]:
    """The next batch (pure): the first waiting request and the later ones that share its key."""
    first = waiting.popleft()
    batch, rows, skipped = [first], len(first.model_input.data), []
    while waiting and rows < max_rows:
        candidate = waiting.popleft()
        size = len(candidate.model_input.data)
        if candidate.key == first.key and rows + size <= max_rows:
            batch.append(candidate)
            rows += size
        else:
            skipped.append(candidate)
    waiting.extendleft(reversed(skipped))
    return batch


class Batcher:
    """Merges concurrent predictions of one model version; lives on the event loop."""

    def __init__(
        self,
        model: LoadedModel,
        executor: Executor,
        settings: Batching,
        labels: tuple[str, str] | None = None,
    ) -> None:
        self.model = model
        # (endpoint, variant) for the queue-depth and batch-size metrics; None: not counted.
        self._queue_gauge = metrics.BATCH_QUEUE.labels(*labels) if labels else None
        self._batch_rows = metrics.BATCH_ROWS.labels(*labels) if labels else None
        self._executor = executor
        self._max_rows = settings.max_batch_size
        self._max_wait = settings.max_wait_ms / 1000
        self._waiting: deque[_Waiting] = deque()
        self._running = False

    async def predict(self, model_input: payload.ModelInput) -> bytes:
        """The encoded predictions for one request, computed with whatever it can be merged with."""
        key = batch_key(model_input)
        loop = asyncio.get_running_loop()
        if key is None or len(model_input.data) >= self._max_rows:
            return await loop.run_in_executor(
                self._executor, predict_parsed, self.model, model_input
            )
        waiting = _Waiting(model_input, loop.create_future(), key)
        self._waiting.append(waiting)
        if self._queue_gauge is not None:
            self._queue_gauge.inc()
        if not self._running:
            self._running = True
            asyncio.create_task(self._drain())  # noqa: RUF006 (it ends when the queue is empty)
        return await waiting.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._waiting:
                batch = take_batch(self._waiting, self._max_rows)
                if len(batch) > 1 and self._max_wait > 0 and self._rows(batch) < self._max_rows:
                    await asyncio.sleep(self._max_wait)
                    self._waiting.extendleft(reversed(batch))
                    batch = take_batch(self._waiting, self._max_rows)
                inputs = [waiting.model_input for waiting in batch]
                if self._queue_gauge is not None and self._batch_rows is not None:
                    self._queue_gauge.dec(len(batch))
                    self._batch_rows.observe(self._rows(batch))
                try:
                    results = await loop.run_in_executor(
                        self._executor, predict_batch, self.model, inputs
                    )
                except Exception as exc:  # never leave a request waiting
                    results = [exc] * len(batch)
                for waiting, result in zip(batch, results, strict=True):
                    if waiting.future.done():
                        continue
                    if isinstance(result, BaseException):
                        waiting.future.set_exception(result)
                    else:
                        waiting.future.set_result(result)
        finally:
            self._running = False

    @staticmethod
    def _rows(batch: Sequence[_Waiting]) -> int:
        return sum(len(waiting.model_input.data) for waiting in batch)


def predict_batch(
    model: LoadedModel, inputs: Sequence[payload.ModelInput]
) -> list[bytes | Exception]:
    """Predict merged inputs in one call and split the answers; alone, each, if that fails."""
    if len(inputs) == 1:
        return [_alone(model, inputs[0])]
    sizes = [len(model_input.data) for model_input in inputs]
    merged = pd.concat([model_input.data for model_input in inputs], ignore_index=True)
    try:
        raw = model.pyfunc.predict(merged, params=inputs[0].params)
        rows = per_row(raw, len(merged))
    except Exception:
        return [_alone(model, model_input) for model_input in inputs]
    answers: list[bytes | Exception] = []
    start = 0
    for size in sizes:
        answers.append(payload.encode_predictions(rows[start : start + size]))
        start += size
    return answers


def _alone(model: LoadedModel, model_input: payload.ModelInput) -> bytes | Exception:
    try:
        return predict_parsed(model, model_input)
    except GatewayError as error:
        return error
