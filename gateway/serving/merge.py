"""One batch in a worker thread: parse each request, predict mergeable ones together, split back.

Requests that would be predicted the same way are merged: rows that the model's frame plan builds,
with the same params; or DataFrames with the same columns, dtypes and params. Each group is
predicted in one call and its predictions are split back by request. A request that cannot be
parsed fails alone; if a merged `predict` fails, each request of its group is predicted alone, so
a bad request fails alone and its neighbours get exactly what they would have got by themselves.
This module knows nothing of the event loop; `gateway.serving.batching` schedules it.
"""

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import pandas as pd

from gateway.core.errors import GatewayError, internal_error
from gateway.core.spans import Stages
from gateway.protocol import payload
from gateway.serving.prediction import Part, Prediction, model_data, predict_raw
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)

_Item = TypeVar("_Item")


@dataclass(frozen=True)
class Queued:
    """A request waiting for its batch: its body and when it was queued (perf_counter)."""

    body_format: payload.Format
    body: bytes
    queued_at: float


def predict_batch(
    variant: str,
    model: LoadedModel,
    requests: Sequence[Queued],
    max_rows: int,
    observe_rows: Callable[[float], None] | None = None,
) -> list[Prediction | GatewayError]:
    """Each request's answer, in the requests' order, predicting mergeable ones together."""
    started = time.perf_counter()
    batch = _Batch(variant, model, observe_rows, started)
    results: list[Prediction | GatewayError | None] = [None] * len(requests)
    groups: dict[tuple[Any, ...], list[tuple[int, payload.ModelInput]]] = {}
    parsing: list[_Parsed] = []  # each request's queue and parse instants, by index
    for index, request in enumerate(requests):
        try:
            parsed = payload.parse(model.spec, request.body_format, request.body)
        except GatewayError as error:
            results[index] = error
            continue
        except Exception:  # a bug in parsing: this request fails, its neighbours go on
            logger.exception("parsing a request for %s failed", model.version.uri)
            results[index] = internal_error()
            continue
        finally:
            end = time.perf_counter()
            parsing.append(_Parsed(request.queued_at, started, end))
            started = end
        key = merge_key(parsed)
        if key is None:
            results[index] = batch.alone(parsed, parsing[index])
        else:
            groups.setdefault(key, []).append((index, parsed))
    for group in groups.values():
        for chunk in chunks(group, max_rows, lambda item: item.row_count):
            inputs = [item for _, item in chunk]
            queued = [parsing[index] for index, _ in chunk]
            answers = batch.merged(inputs, queued)
            for (index, _), answer in zip(chunk, answers, strict=True):
                results[index] = answer
    return [result for result in results if result is not None]


def merge_key(model_input: payload.ModelInput) -> tuple[Any, ...] | None:
    """What parsed requests must share to be merged; None for input that is never merged."""
    params = json.dumps(model_input.params, sort_keys=True, default=str)
    if model_input.rows is not None:
        return ("planned", params)
    data = model_input.data
    if model_input.unwrapped or not isinstance(data, pd.DataFrame) or len(data) == 0:
        return None
    if not isinstance(data.index, pd.RangeIndex):
        return None
    return (tuple(data.columns), tuple(str(dtype) for dtype in data.dtypes), params)


def chunks(
    items: list[tuple[int, _Item]], max_rows: int, rows: Callable[[_Item], int]
) -> list[list[tuple[int, _Item]]]:
    """Consecutive runs of at most `max_rows` rows (a larger request is a run of its own)."""
    result: list[list[tuple[int, _Item]]] = []
    current: list[tuple[int, _Item]] = []
    size = 0
    for item in items:
        count = rows(item[1])
        if current and size + count > max_rows:
            result.append(current)
            current, size = [], 0
        current.append(item)
        size += count
    if current:
        result.append(current)
    return result


class _Parsed(NamedTuple):
    """When a request was queued, and when its parsing started and ended (perf_counter)."""

    queued: float
    start: float
    end: float


@dataclass(frozen=True)
class _Batch:
    variant: str
    model: LoadedModel
    observe_rows: Callable[[float], None] | None
    started: float

    def merged(
        self, inputs: Sequence[payload.ModelInput], queued: Sequence[_Parsed]
    ) -> list[Prediction | GatewayError]:
        """Predict the inputs' rows in one call and split the answers; each alone if that fails."""
        if len(inputs) == 1:
            return [self.alone(inputs[0], queued[0])]
        first = inputs[0]
        sizes = [model_input.row_count for model_input in inputs]
        data = model_data(self.model, inputs)
        total = sum(sizes)
        self._observe(total)
        try:
            raw, started, ended = predict_raw(self.model, data, first.params, first.plan)
            rows = payload.per_row(raw, total)
        except Exception:
            return [self._predict(item, at) for item, at in zip(inputs, queued, strict=True)]
        answers: list[Prediction | GatewayError] = []
        start = 0
        encoding = ended
        for size, parsed in zip(sizes, queued, strict=True):
            part, start = rows[start : start + size], start + size
            try:
                body = payload.encode_predictions(part)
            except Exception:  # predictions that cannot be encoded: this request fails alone
                logger.exception("encoding an answer of %s failed", self.model.version.uri)
                answers.append(internal_error())
                continue
            finally:
                encoded = time.perf_counter()
            stages = self._stages(parsed, started, ended, encoding, encoded, total)
            encoding = encoded
            answers.append(Prediction(body, (self._part(size, stages),)))
        return answers

    def alone(self, model_input: payload.ModelInput, parsed: _Parsed) -> Prediction | GatewayError:
        """One request predicted by itself."""
        self._observe(model_input.row_count)
        return self._predict(model_input, parsed)

    def _predict(
        self, model_input: payload.ModelInput, parsed: _Parsed
    ) -> Prediction | GatewayError:
        try:
            raw, started, ended = predict_raw(
                self.model,
                model_data(self.model, [model_input]),
                model_input.params,
                model_input.plan,
            )
            body = payload.encode_predictions(raw, model_input.unwrapped)
        except GatewayError as error:
            return error
        except Exception:  # e.g. predictions that cannot be encoded: this request fails alone
            logger.exception("answering a request for %s failed", self.model.version.uri)
            return internal_error()
        rows = model_input.row_count
        stages = self._stages(parsed, started, ended, ended, time.perf_counter(), rows)
        return Prediction(body, (self._part(rows, stages),))

    def _stages(
        self,
        parsed: _Parsed,
        started: float,
        ended: float,
        encoding: float,
        encoded: float,
        rows: int,
    ) -> Stages:
        return Stages(
            parsed.queued,
            self.started,
            parsed.start,
            parsed.end,
            started,
            ended,
            encoding,
            encoded,
            rows,
        )

    def _part(self, rows: int, stages: Stages) -> Part:
        version = self.model.version.version
        seconds = stages.predict_end - stages.predict_start
        return Part(
            self.variant, version, rows, None, seconds, self.started - stages.queued, stages
        )

    def _observe(self, rows: int) -> None:
        if self.observe_rows is not None:
            self.observe_rows(rows)
