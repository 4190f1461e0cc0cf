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
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Part:
    """What one variant did for a request: its rows, their predictions, and the time it took."""

    variant: str
    model_version: str
    rows: int
    # Per row, when the request's rows were split between variants; else None.
    predictions: list[Any] | None = None
    # Time in the model's `predict` call, and waiting before the worker thread took the request.
    predict_seconds: float | None = None
    queue_seconds: float | None = None


@dataclass(frozen=True)
class Prediction:
    """A request's encoded answer and the part each variant had in it."""

    body: bytes
    parts: tuple[Part, ...]


def predict_one(
    variant: str,
    model: LoadedModel,
    body_format: payload.Format,
    body: bytes,
    queued_at: float | None = None,
) -> Prediction:
    """Parse and predict a whole request on one variant's model."""
    queue = None if queued_at is None else time.perf_counter() - queued_at
    model_input = payload.parse(model.spec, body_format, body)
    raw, seconds = predict_raw(model, model_input.frame(), model_input.params, model_input.plan)
    encoded = payload.encode_predictions(raw, model_input.unwrapped)
    part = Part(variant, model.version.version, model_input.row_count, None, seconds, queue)
    return Prediction(encoded, (part,))


def predict_by_row(
    endpoint: str,
    field: str,
    weights: Mapping[str, int],
    models: Mapping[str, LoadedModel],
    body_format: payload.Format,
    body: bytes,
    rng: random.Random,
    queued_at: float | None = None,
) -> Prediction:
    """Route each row by its user key in `field`, predict each group, answer in row order."""
    queue = None if queued_at is None else time.perf_counter() - queued_at
    first = models[next(iter(weights))]
    model_input = payload.parse(first.spec, body_format, body)
    frame = model_input.frame()
    if not isinstance(frame, pd.DataFrame) or field not in frame.columns:
        raise GatewayError(
            "BAD_REQUEST",
            f"Endpoint '{endpoint}' routes each row by its '{field}' column, which the request lacks.",
        )
    keys = frame[field]
    if not isinstance(keys, pd.Series):  # the column appears more than once
        raise GatewayError(
            "BAD_REQUEST",
            f"Endpoint '{endpoint}' routes each row by its '{field}' column, "
            "which the request has more than once.",
        )
    groups: dict[str, list[int]] = {}
    for row, variant in enumerate(_assign(endpoint, keys, weights, rng)):
        groups.setdefault(variant, []).append(row)
    if len(groups) == 1:
        (variant,) = groups
        model = models[variant]
        raw, seconds = predict_raw(model, frame, model_input.params, model_input.plan)
        encoded = payload.encode_predictions(raw, model_input.unwrapped)
        part = Part(variant, model.version.version, len(frame), None, seconds, queue)
        return Prediction(encoded, (part,))
    merged: list[Any] = [None] * len(frame)
    parts = []
    for variant, rows in groups.items():
        model = models[variant]
        subset = frame.iloc[rows].reset_index(drop=True)
        raw, seconds = predict_raw(model, subset, model_input.params, model_input.plan)
        predictions = payload.per_row(raw, len(rows))
        for row, prediction in zip(rows, predictions, strict=True):
            merged[row] = prediction
        parts.append(Part(variant, model.version.version, len(rows), predictions, seconds, queue))
    encoded = payload.encode_predictions(merged, model_input.unwrapped)
    return Prediction(encoded, tuple(parts))


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
    model: LoadedModel, data: Any, params: dict[str, Any] | None, plan: Any = None
) -> tuple[Any, float]:
    """The model's raw predictions and the seconds `predict` took.

    A frame built by a frame plan equal to the model's own skips MLflow's schema enforcement:
    variant A's plan builds exactly what variant B's would when both have the same signature.
    """
    exact = plan is not None and plan == model.spec.plan and model.planned_pyfunc is not None
    pyfunc = model.planned_pyfunc if exact else model.pyfunc
    started = time.perf_counter()
    try:
        raw = pyfunc.predict(data, params=params)
    except Exception as exc:
        error = payload.predict_error(exc)
        logger.warning(
            "predict failed on %s: %s",
            model.version.uri,
            error.message,
            exc_info=not _is_mlflow(exc),
        )
        raise error from exc
    return raw, time.perf_counter() - started


def _is_mlflow(exc: Exception) -> bool:
    return type(exc).__module__.startswith("mlflow")
