"""A batch in its worker thread: which requests share a `predict` call, and what each one gets."""

import json
from typing import Any

import pandas as pd
import pytest

from gateway.core.errors import GatewayError
from gateway.protocol import payload
from gateway.protocol.payload import Format, ModelInput
from gateway.serving.merge import Queued, chunks, merge_key, predict_batch
from gateway.serving.prediction import Prediction, predict_one
from tests.helpers import FakePyfunc, PredictCall, fake_model, input_spec

BAD = Queued(Format.JSON, b'{"rows": [[1, "basic"]]}', 0.0)


def split(*ages: int, params: dict[str, Any] | None = None) -> Queued:
    """A `dataframe_split` request with one row an age, typed as the frame plan takes it."""
    document: dict[str, Any] = {
        "dataframe_split": {"columns": ["age", "plan"], "data": [[age, "basic"] for age in ages]}
    }
    if params is not None:
        document["params"] = params
    return Queued(Format.JSON, json.dumps(document).encode(), 0.0)


def records(*ages: int) -> Queued:
    """A `dataframe_records` request, its columns in another order than the signature's."""
    rows = [{"plan": "basic", "age": age} for age in ages]
    return Queued(Format.JSON, json.dumps({"dataframe_records": rows}).encode(), 0.0)


def csv(*ages: int) -> Queued:
    """A CSV request."""
    text = "age,plan\n" + "".join(f"{age},basic\n" for age in ages)
    return Queued(Format.CSV, text.encode(), 0.0)


def answer(*ages: int) -> bytes:
    """The body the fake model's predictions for these ages make."""
    return json.dumps({"predictions": [age * 10 for age in ages]}).encode()


def call(*ages: int, params: dict[str, Any] | None = None) -> PredictCall:
    """A `predict` call of these rows."""
    return PredictCall(ages, params)


# (requests, max_rows, the predict calls made, each request's body or error code)
BATCHES: dict[str, tuple[list[Queued], int, list[PredictCall], list[bytes | str]]] = {
    "a lone request is one call": ([split(1, 2)], 64, [call(1, 2)], [answer(1, 2)]),
    "planned rows of several requests share a call": (
        [split(1, 2), split(3)],
        64,
        [call(1, 2, 3)],
        [answer(1, 2), answer(3)],
    ),
    "records and split documents share a call": (
        [records(1), split(2, 3)],
        64,
        [call(1, 2, 3)],
        [answer(1), answer(2, 3)],
    ),
    "csv requests share a call of their own": (
        [csv(4, 5), split(1), csv(6)],
        64,
        [call(4, 5, 6), call(1)],
        [answer(4, 5), answer(1), answer(6)],
    ),
    "requests with different params are predicted apart": (
        [split(1, params={"k": 1}), split(2, params={"k": 2}), split(3, params={"k": 1})],
        64,
        [call(1, 3, params={"k": 1}), call(2, params={"k": 2})],
        [answer(1), answer(2), answer(3)],
    ),
    "a bad request fails alone without a predict call": (
        [split(1), BAD, split(2)],
        64,
        [call(1, 2)],
        [answer(1), "BAD_REQUEST", answer(2)],
    ),
    "a request that makes predict raise fails alone after each is predicted alone": (
        [split(1), split(13), split(2)],
        64,
        [call(1, 13, 2), call(1), call(13), call(2)],
        [answer(1), "BAD_REQUEST", answer(2)],
    ),
    "an unencodable prediction fails alone in its merged call": (
        [split(1, 2), split(14), split(3)],
        64,
        [call(1, 2, 14, 3)],
        [answer(1, 2), "INTERNAL_ERROR", answer(3)],
    ),
    "a merged call holds at most max_rows rows": (
        [split(1, 2), split(3, 4), split(5)],
        4,
        [call(1, 2, 3, 4), call(5)],
        [answer(1, 2), answer(3, 4), answer(5)],
    ),
    "a request larger than max_rows is a call of its own": (
        [split(1, 2, 3), split(4), split(5)],
        2,
        [call(1, 2, 3), call(4, 5)],
        [answer(1, 2, 3), answer(4), answer(5)],
    ),
}


def outcome_of(result: Prediction | GatewayError) -> bytes | str:
    """A request's body, or its error code."""
    return result.error_code if isinstance(result, GatewayError) else result.body


@pytest.mark.parametrize(
    ("requests", "max_rows", "calls", "answers"), list(BATCHES.values()), ids=list(BATCHES)
)
def test_a_batch_makes_these_predict_calls_and_gives_each_request_its_answer(
    requests: list[Queued], max_rows: int, calls: list[PredictCall], answers: list[bytes | str]
) -> None:
    pyfunc = FakePyfunc()
    observed: list[float] = []
    results = predict_batch("champion", fake_model(pyfunc), requests, max_rows, observed.append)
    assert pyfunc.calls == calls
    assert [outcome_of(result) for result in results] == answers
    for result, request in zip(results, requests, strict=True):
        if isinstance(result, Prediction):
            (part,) = result.parts
            rows = payload.parse(input_spec(), request.body_format, request.body).row_count
            assert (part.variant, part.model_version, part.rows) == ("champion", "1", rows)


@pytest.mark.parametrize(
    ("requests", "max_rows"),
    [(requests, max_rows) for requests, max_rows, _, _ in BATCHES.values()],
    ids=list(BATCHES),
)
def test_each_request_of_a_batch_gets_what_it_would_get_alone(
    requests: list[Queued], max_rows: int
) -> None:
    results = predict_batch("champion", fake_model(FakePyfunc()), requests, max_rows)
    alone: list[bytes | str] = []
    for request in requests:
        try:
            prediction = predict_one(
                "champion", fake_model(FakePyfunc()), request.body_format, request.body
            )
        except GatewayError as error:
            alone.append(error.error_code)
        except Exception:  # what the service answers for a bug
            alone.append("INTERNAL_ERROR")
        else:
            alone.append(prediction.body)
    assert [outcome_of(result) for result in results] == alone


def parsed(request: Queued) -> ModelInput:
    """A request as the fake model's spec parses it."""
    return payload.parse(input_spec(), request.body_format, request.body)


# Pairs of inputs, and whether they may be merged.
MERGEABLE: dict[str, tuple[ModelInput, ModelInput, bool]] = {
    "planned split and planned split": (parsed(split(1)), parsed(split(2, 3)), True),
    "planned split and planned records": (parsed(split(1)), parsed(records(2)), True),
    "same params": (
        parsed(split(1, params={"k": 1})),
        parsed(split(2, params={"k": 1})),
        True,
    ),
    "different params": (
        parsed(split(1, params={"k": 1})),
        parsed(split(2, params={"k": 2})),
        False,
    ),
    "params or none": (parsed(split(1, params={"k": 1})), parsed(split(2)), False),
    "csv and csv": (parsed(csv(1)), parsed(csv(2, 3)), True),
    "csv and planned json": (parsed(csv(1)), parsed(split(1)), False),
    "frames of other dtypes": (
        ModelInput(pd.DataFrame({"age": [1]}), None),
        ModelInput(pd.DataFrame({"age": [1.5]}), None),
        False,
    ),
    "frames of other columns": (
        ModelInput(pd.DataFrame({"age": [1]}), None),
        ModelInput(pd.DataFrame({"years": [1]}), None),
        False,
    ),
}


@pytest.mark.parametrize(
    ("first", "second", "mergeable"), list(MERGEABLE.values()), ids=list(MERGEABLE)
)
def test_inputs_are_merged_only_when_their_merge_keys_agree(
    first: ModelInput, second: ModelInput, mergeable: bool
) -> None:
    assert merge_key(first) is not None
    assert merge_key(second) is not None
    assert (merge_key(first) == merge_key(second)) is mergeable


@pytest.mark.parametrize(
    "model_input",
    [
        ModelInput(pd.DataFrame({"age": [1]}), None, unwrapped=True),
        ModelInput(pd.DataFrame({"age": []}), None),
        ModelInput(pd.DataFrame({"age": [1, 2]}, index=[5, 6]), None),
        ModelInput([[1, 2]], None),
        ModelInput({"age": [1]}, None),
    ],
    ids=["unwrapped", "empty frame", "own index", "a list", "a dict"],
)
def test_input_that_cannot_be_concatenated_is_never_merged(model_input: ModelInput) -> None:
    assert merge_key(model_input) is None


@pytest.mark.parametrize(
    ("rows", "max_rows", "expected"),
    [
        ([], 4, []),
        ([1], 4, [[0]]),
        ([1, 1, 1], 2, [[0, 1], [2]]),
        ([2, 2], 4, [[0, 1]]),
        ([2, 2, 1], 4, [[0, 1], [2]]),
        ([5], 2, [[0]]),
        ([1, 5, 1], 4, [[0], [1], [2]]),
        ([3, 1, 1], 3, [[0], [1, 2]]),
        ([1, 1, 1, 1], 1, [[0], [1], [2], [3]]),
    ],
)
def test_chunks_are_consecutive_runs_of_at_most_max_rows(
    rows: list[int], max_rows: int, expected: list[list[int]]
) -> None:
    items = list(enumerate(rows))
    result = chunks(items, max_rows, lambda count: count)
    assert [[index for index, _ in chunk] for chunk in result] == expected
    assert [item for chunk in result for item in chunk] == items
