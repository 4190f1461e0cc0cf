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
from gateway.core.spans import Stages
from gateway.observe.quiet import QuietLog
from gateway.protocol import payload
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)
# Failed predicts (a client's bad input, mostly): one line per model version and kind a while.
PREDICT_FAILURES = QuietLog(logger)


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
    # When each stage ran (perf_counter), for the trace; None for a shadow or a failed request.
    stages: Stages | None = None


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
    taken = time.perf_counter()
    model_input = payload.parse(model.spec, body_format, body)
    parsed = time.perf_counter()
    rows = model_input.row_count
    raw, started, ended = predict_raw(
        model, model_data(model, [model_input]), model_input.params, model_input.plan
    )
    encoded = payload.encode_predictions(raw, model_input.unwrapped)
    if queued_at is None:  # a shadow copy: neither queued nor traced
        return Prediction(
            encoded, (Part(variant, model.version.version, rows, None, ended - started),)
        )
    stages = Stages(
        queued_at, taken, taken, parsed, started, ended, ended, time.perf_counter(), rows
    )
    queue = taken - queued_at
    part = Part(variant, model.version.version, rows, None, ended - started, queue, stages)
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
    taken = time.perf_counter()
    first = models[next(iter(weights))]
    model_input = payload.parse(first.spec, body_format, body)
    frame = model_input.frame()
    parsed = time.perf_counter()
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
    done: list[_Group] = []
    if len(groups) == 1:
        (variant,) = groups
        raw, started, ended = predict_raw(
            models[variant], frame, model_input.params, model_input.plan
        )
        encoded = payload.encode_predictions(raw, model_input.unwrapped)
        done.append(_Group(variant, len(frame), None, started, ended))
    else:
        merged: list[Any] = [None] * len(frame)
        for variant, rows in groups.items():
            subset = frame.iloc[rows].reset_index(drop=True)
            raw, started, ended = predict_raw(
                models[variant], subset, model_input.params, model_input.plan
            )
            predictions = payload.per_row(raw, len(rows))
            for row, prediction in zip(rows, predictions, strict=True):
                merged[row] = prediction
            done.append(_Group(variant, len(rows), predictions, started, ended))
        encoded = payload.encode_predictions(merged, model_input.unwrapped)
    encoded_at = time.perf_counter()
    queued = taken if queued_at is None else queued_at
    parts = tuple(
        Part(
            group.variant,
            models[group.variant].version.version,
            group.rows,
            group.predictions,
            group.ended - group.started,
            None if queued_at is None else taken - queued_at,
            Stages(
                queued,
                taken,
                taken,
                parsed,
                group.started,
                group.ended,
                done[-1].ended,
                encoded_at,
                group.rows,
            ),
        )
        for group in done
    )
    return Prediction(encoded, parts)


@dataclass(frozen=True)
class _Group:
    """The rows of a request routed per row that one variant predicted, and when."""

    variant: str
    rows: int
    predictions: list[Any] | None
    started: float
    ended: float


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


def goes_direct(model: LoadedModel, plan: Any, params: dict[str, Any] | None) -> bool:
    """Whether input built by `plan` is predicted straight on the model's scikit-learn estimator
    (`gateway.serving.direct`): the model allows it, the plan is its own, and there are no params."""
    return model.direct is not None and plan is not None and plan == model.spec.plan and not params


def model_data(model: LoadedModel, inputs: Sequence[payload.ModelInput]) -> Any:
    """What `predict_raw` takes for the rows of these inputs (one, or several merged alike).

    Planned rows are built as one array a column for a model predicted directly, else as one frame;
    inputs without a plan are their data as parsed (several frames concatenated).
    """
    first = inputs[0]
    if first.rows is None or first.plan is None:
        if len(inputs) == 1:
            return first.data
        return pd.concat([item.data for item in inputs], ignore_index=True)
    parts = [item.rows for item in inputs if item.rows is not None]
    if goes_direct(model, first.plan, first.params):
        return first.plan.columns(parts)
    return first.plan.build(parts)


def predict_raw(
    model: LoadedModel, data: Any, params: dict[str, Any] | None, plan: Any = None
) -> tuple[Any, float, float]:
    """The model's raw predictions and when `predict` started and ended (perf_counter).

    Input built by a frame plan equal to the model's own skips MLflow's schema enforcement:
    variant A's plan builds exactly what variant B's would when both have the same signature.
    Where `goes_direct`, it is predicted straight on the scikit-learn estimator instead.
    """
    started = time.perf_counter()
    try:
        if goes_direct(model, plan, params):
            assert model.direct is not None
            columns = plan.columns_of(data) if isinstance(data, pd.DataFrame) else data
            raw = model.direct(columns)
        else:
            exact = plan is not None and plan == model.spec.plan and model.planned_pyfunc
            raw = (model.planned_pyfunc if exact else model.pyfunc).predict(data, params=params)
    except Exception as exc:
        error = payload.predict_error(exc)
        # The caller gets a 4xx: one short line per kind and interval, the traceback at DEBUG.
        kind = type(exc).__name__
        PREDICT_FAILURES.warning(
            (model.version.uri, kind), "predict failed on %s: %s", model.version.uri, kind
        )
        logger.debug("predict failed on %s", model.version.uri, exc_info=True)
        raise error from exc
    return raw, started, time.perf_counter()
