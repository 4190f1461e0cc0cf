"""Adaptive batching: concurrent requests for one model version merged into one `predict` call.

Requests that arrive while a batch of their version is being predicted queue up and go together
in the next one (up to `max_batch_size` requests and as many rows). A request that arrives when
the batcher has been idle for more than `max_wait_ms` is predicted at once: a request alone never
waits. Under load, when the last batch was answered less than `max_wait_ms` ago, a new batch
waits at most `max_wait_ms` until it is as large as that last batch. Concurrent clients answered
together send their next requests a few hundred microseconds apart; without that wait the first
of them would go alone and the rest together, two `predict` calls where one does.

A batch is one hand-off to a worker thread, which parses every request of it, merges those that
would be predicted the same way (rows that the model's frame plan builds, with the same params;
or DataFrames with the same columns, dtypes and params), predicts each group in one call and
splits the predictions back. A request that cannot be parsed fails alone; if a merged `predict`
fails, each request of its group is predicted alone, so a bad request fails alone and its
neighbours get exactly what they would have got by themselves.
"""

import asyncio
import contextlib
import json
import logging
import math
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd

from gateway.core.config import Batching
from gateway.core.errors import GatewayError, internal_error
from gateway.observe import metrics
from gateway.protocol import payload
from gateway.protocol.frame_plan import PlannedRows
from gateway.serving.prediction import parse, per_row, predict_parsed, predict_raw, row_count
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Batched:
    """One request's encoded predictions and how many rows it had."""

    body: bytes
    rows: int


@dataclass(frozen=True)
class _Request:
    body_format: payload.Format
    body: bytes


@dataclass
class _Waiting:
    request: _Request
    future: "asyncio.Future[Batched]"


@dataclass(frozen=True)
class _Planned:
    """A request whose rows the model's frame plan built."""

    rows: PlannedRows
    params: dict[str, Any] | None


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
        self._observe_rows = metrics.BATCH_ROWS.labels(*labels).observe if labels else None
        self._executor = executor
        self._max_size = settings.max_batch_size
        self._max_wait = settings.max_wait_ms / 1000
        self._waiting: deque[_Waiting] = deque()
        self._running = False
        # The last batch answered: its size and the loop's time then.
        self._last_size = 0
        self._last_end = -math.inf
        # A batch waiting to reach `_target` requests, and the timer that ends its wait.
        self._held: list[_Waiting] | None = None
        self._target = 0
        self._timer: asyncio.TimerHandle | None = None

    async def predict(self, body_format: payload.Format, body: bytes) -> Batched:
        """One request's predictions, computed with whatever it can be merged with."""
        loop = asyncio.get_running_loop()
        waiting = _Waiting(_Request(body_format, body), loop.create_future())
        self._waiting.append(waiting)
        if self._queue_gauge is not None:
            self._queue_gauge.inc()
        if not self._running:
            self._running = True
            loop.call_soon(self._next, loop)
        elif self._held is not None and len(self._held) + len(self._waiting) >= self._target:
            self._release(loop)
        return await waiting.future

    # A batch is driven by callbacks on the loop, not by a task: no task to create and step
    # through for each batch, and no asyncio future wrapping the thread's. A batch is taken with
    # call_soon, once the requests that reached the loop together have all been queued: a request
    # alone waits for no one, and requests read in the same turn of the loop share a batch
    # instead of the first going alone.

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next batch, or stop when nobody is waiting."""
        if not self._waiting:
            self._running = False
            return
        batch = self._take([])
        under_load = self._max_wait > 0 and loop.time() - self._last_end <= self._max_wait
        target = min(self._last_size, self._max_size) if under_load else 1
        if len(batch) < target:
            self._held, self._target = batch, target
            self._timer = loop.call_later(self._max_wait, self._release, loop)
        else:
            self._submit(loop, batch)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """End a held batch's wait: it reached its size, or its time is up."""
        held, self._held = self._held, None
        if held is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._submit(loop, self._take(held))

    def _submit(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        if self._queue_gauge is not None:
            self._queue_gauge.dec(len(batch))
        requests = [waiting.request for waiting in batch]
        try:
            done = self._executor.submit(
                predict_batch, self.model, requests, self._max_size, self._observe_rows
            )
        except RuntimeError:  # the executor is shut down: the gateway is stopping
            self._finish(loop, batch, None)
            return

        def answer(done: "Future[list[Batched | GatewayError]]") -> None:
            # Runs on the worker thread; a loop that is closed has nobody left to answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finish, loop, batch, done)

        done.add_done_callback(answer)

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        done: "Future[list[Batched | GatewayError]] | None",
    ) -> None:
        """Answer each request of a batch, then start the next one."""
        self._last_size, self._last_end = len(batch), loop.time()
        try:
            if done is None:
                results: list[Batched | GatewayError] = [internal_error()] * len(batch)
            else:
                try:
                    results = done.result()
                    if len(results) != len(batch):
                        raise RuntimeError(f"{len(results)} answers to {len(batch)} requests")
                except Exception:  # a bug: never leave a request waiting
                    logger.exception("a batch of %d requests failed", len(batch))
                    results = [internal_error()] * len(batch)
            for waiting, result in zip(batch, results, strict=True):
                if waiting.future.done():  # its request timed out or its client left
                    continue
                if isinstance(result, GatewayError):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
        finally:
            loop.call_soon(self._next, loop)

    def _take(self, batch: list[_Waiting]) -> list[_Waiting]:
        while self._waiting and len(batch) < self._max_size:
            batch.append(self._waiting.popleft())
        return batch


def predict_batch(
    model: LoadedModel,
    requests: Sequence[_Request],
    max_rows: int,
    observe_rows: Callable[[float], None] | None = None,
) -> list[Batched | GatewayError]:
    """Parse each request, predict mergeable ones together, answer each in the requests' order."""
    results: list[Batched | GatewayError | None] = [None] * len(requests)
    planned: dict[str, list[tuple[int, _Planned]]] = {}
    framed: dict[tuple[Any, ...], list[tuple[int, payload.ModelInput]]] = {}
    for index, request in enumerate(requests):
        try:
            parsed = _parse(model, request)
        except GatewayError as error:
            results[index] = error
            continue
        except Exception:  # a bug in parsing: this request fails, its neighbours go on
            logger.exception("parsing a request for %s failed", model.version.uri)
            results[index] = internal_error()
            continue
        if isinstance(parsed, _Planned):
            planned.setdefault(_params_key(parsed.params), []).append((index, parsed))
            continue
        key = _batch_key(parsed)
        if key is None:
            results[index] = _alone(model, parsed, observe_rows)
        else:
            framed.setdefault(key, []).append((index, parsed))
    for group in planned.values():
        for chunk in _chunks(group, max_rows, lambda item: item.rows.length):
            answers = _predict_planned(model, [item for _, item in chunk], observe_rows)
            for (index, _), answer in zip(chunk, answers, strict=True):
                results[index] = answer
    for frames in framed.values():
        for run in _chunks(frames, max_rows, lambda item: len(item.data)):
            answered = _predict_frames(model, [item for _, item in run], observe_rows)
            for (position, _), answer in zip(run, answered, strict=True):
                results[position] = answer
    return [result for result in results if result is not None]


def _batch_key(model_input: payload.ModelInput) -> tuple[Any, ...] | None:
    """What parsed requests must share to be merged; None for input that is never merged."""
    data = model_input.data
    if model_input.unwrapped or not isinstance(data, pd.DataFrame) or len(data) == 0:
        return None
    if not isinstance(data.index, pd.RangeIndex):
        return None
    return (
        tuple(data.columns),
        tuple(str(dtype) for dtype in data.dtypes),
        _params_key(model_input.params),
    )


def _params_key(params: dict[str, Any] | None) -> str:
    return json.dumps(params, sort_keys=True, default=str)


def _parse(model: LoadedModel, request: _Request) -> _Planned | payload.ModelInput:
    plan = model.frame_plan
    if request.body_format is payload.Format.JSON and plan is not None:
        document = payload.decode_json(request.body)
        rows = payload.planned_rows(document, plan)
        if rows is not None:
            return _Planned(rows, document.get("params"))
        return payload.parse_json(document, model.metadata, model.input_schema)
    return parse(model, request.body_format, request.body)


def _chunks(
    items: list[tuple[int, _Item]], max_rows: int, rows: Callable[[_Item], int]
) -> list[list[tuple[int, _Item]]]:
    """Consecutive runs of at most `max_rows` rows (a larger request is a run of its own)."""
    chunks: list[list[tuple[int, _Item]]] = []
    current: list[tuple[int, _Item]] = []
    size = 0
    for item in items:
        count = rows(item[1])
        if current and size + count > max_rows:
            chunks.append(current)
            current, size = [], 0
        current.append(item)
        size += count
    if current:
        chunks.append(current)
    return chunks


def _predict_planned(
    model: LoadedModel, items: Sequence[_Planned], observe_rows: Callable[[float], None] | None
) -> list[Batched | GatewayError]:
    plan = model.frame_plan
    assert plan is not None

    def each() -> list[payload.ModelInput]:
        return [payload.ModelInput(plan.build([i.rows]), i.params, plan=plan) for i in items]

    if len(items) == 1:
        return [_alone(model, each()[0], observe_rows)]
    merged = payload.ModelInput(plan.build([i.rows for i in items]), items[0].params, plan=plan)
    return _merged(model, merged, [i.rows.length for i in items], each, observe_rows)


def _predict_frames(
    model: LoadedModel,
    inputs: Sequence[payload.ModelInput],
    observe_rows: Callable[[float], None] | None,
) -> list[Batched | GatewayError]:
    if len(inputs) == 1:
        return [_alone(model, inputs[0], observe_rows)]
    frame = pd.concat([model_input.data for model_input in inputs], ignore_index=True)
    merged = payload.ModelInput(frame, inputs[0].params)
    sizes = [len(model_input.data) for model_input in inputs]
    return _merged(model, merged, sizes, lambda: list(inputs), observe_rows)


def _merged(
    model: LoadedModel,
    merged: payload.ModelInput,
    sizes: Sequence[int],
    each: Callable[[], Sequence[payload.ModelInput]],
    observe_rows: Callable[[float], None] | None,
) -> list[Batched | GatewayError]:
    """Predict merged rows once and split the answers; each input alone if that fails."""
    if observe_rows is not None:
        observe_rows(sum(sizes))
    try:
        raw = predict_raw(model, merged.data, merged.params, merged.plan)
        rows = per_row(raw, sum(sizes))
    except Exception:
        return [_alone(model, model_input, observe_rows) for model_input in each()]
    answers: list[Batched | GatewayError] = []
    start = 0
    for size in sizes:
        part, start = rows[start : start + size], start + size
        try:
            answers.append(Batched(payload.encode_predictions(part), size))
        except Exception:  # predictions that cannot be encoded: this request fails alone
            logger.exception("encoding the answer of a request for %s failed", model.version.uri)
            answers.append(internal_error())
    return answers


def _alone(
    model: LoadedModel,
    model_input: payload.ModelInput,
    observe_rows: Callable[[float], None] | None,
) -> Batched | GatewayError:
    rows = row_count(model_input.data)
    if observe_rows is not None:
        observe_rows(rows)
    try:
        return Batched(predict_parsed(model, model_input), rows)
    except GatewayError as error:
        return error
    except Exception:  # e.g. predictions that cannot be encoded: this request fails alone
        logger.exception("answering a request for %s failed", model.version.uri)
        return internal_error()
