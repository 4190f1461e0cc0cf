"""The blocking part of an invocation, run in a worker thread: parse, predict, encode.

A request routed per row (sticky by a payload column) is parsed once, its rows are grouped by
variant, each group is predicted by its variant's model, and the predictions are put back in the
rows' original order, so the client gets one answer as if one model had served it.
"""

import logging
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from gateway.core.errors import GatewayError
from gateway.core.routing import choose_random, choose_sticky_many
from gateway.protocol import payload
from gateway.protocol.frame_plan import FramePlan
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Served:
    """What one variant computed for a request: its part of the rows and their predictions."""

    variant: str
    model: LoadedModel
    rows: int
    predictions: list[Any] | None  # per row, when the request was split; else None


@dataclass(frozen=True)
class Prediction:
    """The encoded answer and who served which rows."""

    body: bytes
    served: list[Served]
    seconds: float


def parse(model: LoadedModel, body_format: payload.Format, body: bytes) -> payload.ModelInput:
    """The request as the model's input, typed by its signature."""
    if body_format is payload.Format.JSON:
        document = payload.decode_json(body)
        return payload.parse_json(document, model.metadata, model.input_schema, model.frame_plan)
    if body_format is payload.Format.CSV:
        return payload.parse_csv(body, model.input_schema)
    return payload.parse_parquet(body)


def predict_one(
    variant: str, model: LoadedModel, body_format: payload.Format, body: bytes
) -> Prediction:
    """Parse and predict a whole request on one variant's model."""
    started = time.perf_counter()
    model_input = parse(model, body_format, body)
    encoded = predict_parsed(model, model_input)
    rows = row_count(model_input.data)
    return Prediction(encoded, [Served(variant, model, rows, None)], time.perf_counter() - started)


def predict_parsed(model: LoadedModel, model_input: payload.ModelInput) -> bytes:
    """Predict parsed input and encode the answer."""
    raw = predict_raw(model, model_input.data, model_input.params, model_input.plan)
    return payload.encode_predictions(raw, model_input.unwrapped)


def predict_by_row(
    endpoint: str,
    field: str,
    weights: Mapping[str, int],
    models: Mapping[str, LoadedModel],
    body_format: payload.Format,
    body: bytes,
    rng: random.Random,
) -> Prediction:
    """Route each row by its user key in `field`, predict each group, answer in row order."""
    started = time.perf_counter()
    first = models[next(iter(weights))]
    model_input = parse(first, body_format, body)
    frame = model_input.data
    if not isinstance(frame, pd.DataFrame) or field not in frame.columns:
        raise GatewayError(
            "BAD_REQUEST",
            f"Endpoint '{endpoint}' routes each row by its '{field}' column, which the request lacks.",
        )
    assignment = _assign(endpoint, frame[field], weights, rng)
    groups: dict[str, list[int]] = {}
    for row, variant in enumerate(assignment):
        groups.setdefault(variant, []).append(row)
    if len(groups) == 1:
        (variant,) = groups
        raw = predict_raw(models[variant], frame, model_input.params, model_input.plan)
        encoded = payload.encode_predictions(raw, model_input.unwrapped)
        return Prediction(
            encoded,
            [Served(variant, models[variant], len(frame), None)],
            time.perf_counter() - started,
        )
    merged: list[Any] = [None] * len(frame)
    served = []
    for variant, rows in groups.items():
        part = frame.iloc[rows].reset_index(drop=True)
        raw = predict_raw(models[variant], part, model_input.params, model_input.plan)
        predictions = per_row(raw, len(rows))
        for row, prediction in zip(rows, predictions, strict=True):
            merged[row] = prediction
        served.append(Served(variant, models[variant], len(rows), predictions))
    encoded = payload.encode_predictions(merged, model_input.unwrapped)
    return Prediction(encoded, served, time.perf_counter() - started)


def per_row(raw: Any, rows: int) -> list[Any]:
    """Predictions as one JSON-ready item a row, as MLflow would write them."""
    from mlflow.utils.proto_json_utils import _get_jsonable_obj

    items = _get_jsonable_obj(raw, pandas_orient="records")
    if not isinstance(items, list) or len(items) != rows:
        raise GatewayError(
            "BAD_REQUEST",
            "The model's output cannot be split by row, so this endpoint cannot route rows "
            "separately; use a sticky header instead.",
        )
    return items


def count_differences(served: Sequence[Any], shadow: Sequence[Any]) -> tuple[int, int]:
    """Rows compared and rows whose predictions differ (floats compared to 1e-9 relative)."""
    compared = min(len(served), len(shadow))
    differing = sum(1 for a, b in zip(served, shadow, strict=False) if not _same(a, b))
    return compared, differing + abs(len(served) - len(shadow))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(a, int | float)
            and isinstance(b, int | float)
            and math.isclose(a, b, rel_tol=1e-9)
        )
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _assign(
    endpoint: str, keys: pd.Series, weights: Mapping[str, int], rng: random.Random
) -> list[str]:
    """Each row's variant: sticky by its key, or a weighted draw for a row without one."""
    present = keys.notna().to_numpy()
    texts = keys.astype(str).tolist()
    assignment = choose_sticky_many(
        endpoint, [t for t, ok in zip(texts, present, strict=True) if ok], weights
    )
    if all(present):
        return assignment
    sticky = iter(assignment)
    return [next(sticky) if ok else choose_random(weights, rng) for ok in present]


def predict_raw(
    model: LoadedModel, data: Any, params: dict[str, Any] | None, plan: FramePlan | None = None
) -> Any:
    """The model's raw predictions; a frame built by the model's own plan skips schema enforcement.

    Any plan with the same signature is the model's own: a frame that variant A's plan built is
    exact for variant B too when both have the same signature, and enforced as usual otherwise.
    """
    exact = plan is not None and plan == model.frame_plan and model.planned_pyfunc is not None
    pyfunc = model.planned_pyfunc if exact else model.pyfunc
    try:
        return pyfunc.predict(data, params=params)
    except Exception as exc:
        error = payload.predict_error(exc)
        logger.warning(
            "predict failed on %s: %s",
            model.version.uri,
            error.message,
            exc_info=not _is_mlflow(exc),
        )
        raise error from exc


def _is_mlflow(exc: Exception) -> bool:
    return type(exc).__module__.startswith("mlflow")


def row_count(data: Any) -> int:
    """Rows in a model input (1 for something without a length)."""
    try:
        return len(data)
    except TypeError:
        return 1
