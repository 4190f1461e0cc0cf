"""The fast frame plan gives exactly MLflow's frame, or steps aside."""

import math
import random
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.models import Model, ModelSignature
from mlflow.models.utils import _enforce_schema
from mlflow.types import ColSpec, Schema

from gateway.protocol import payload
from gateway.protocol.frame_plan import make_plan
from gateway.serving.direct import numeric_stack

SCHEMA = Schema(
    [
        ColSpec("long", "age"),
        ColSpec("double", "income"),
        ColSpec("string", "plan"),
        ColSpec("boolean", "vip"),
    ]
)
METADATA = Model(signature=ModelSignature(inputs=SCHEMA))
NAMES = ["age", "income", "plan", "vip"]


def reference(document: dict[str, Any]) -> Any:
    """What MLflow hands the model: its own parse, without the plan, then its schema enforcement."""
    return _enforce_schema(payload.parse_json(document, METADATA, SCHEMA).data, SCHEMA)


PLAN = make_plan(METADATA, SCHEMA, reference)

# Values of every JSON type, including the awkward ones for each column.
VALUES: list[Any] = [
    0,
    1,
    -7,
    2**62,
    2**63,
    2**70,
    0.5,
    -1e300,
    math.nan,
    math.inf,
    True,
    False,
    None,
    "",
    "basic",
    "prémium ✓",
    "12",
]


def random_document(rng: random.Random) -> dict[str, Any]:
    rows = rng.randint(1, 4)
    names = rng.sample(NAMES, k=len(NAMES)) if rng.random() < 0.5 else list(NAMES)
    if rng.random() < 0.1:
        names = names[:-1]
    typed: dict[str, list[object]] = {
        "age": [3, 40, 2**40],
        "income": [1.5, 2, 0.25],
        "plan": ["basic", "pro", ""],
        "vip": [True, False],
    }
    table = [
        {
            name: rng.choice(typed[name]) if rng.random() < 0.85 else rng.choice(VALUES)
            for name in names
        }
        for _ in range(rows)
    ]
    if rng.random() < 0.5:
        return {"dataframe_records": table}
    return {
        "dataframe_split": {
            "columns": names,
            "data": [[row[name] for name in names] for row in table],
        }
    }


def test_every_frame_the_plan_builds_is_exactly_mlflows() -> None:
    assert PLAN is not None
    rng = random.Random(20261123)
    built = 0
    for _ in range(3000):
        document = random_document(rng)
        rows = PLAN.rows(document)
        if rows is None:
            continue
        fast = PLAN.build([rows])
        built += 1
        expected = reference(document)
        pd.testing.assert_frame_equal(fast, expected, check_exact=True)
        # So MLflow's enforcement, which the plan's frames skip, would change nothing.
        pd.testing.assert_frame_equal(_enforce_schema(fast, SCHEMA), expected, check_exact=True)
    # The common, well-typed request does take the fast path.
    assert built > 1000


def test_rows_of_several_requests_build_the_frame_of_all_their_rows() -> None:
    assert PLAN is not None
    rng = random.Random(7)
    merged = 0
    while merged < 200:
        documents = [random_document(rng) for _ in range(rng.randint(2, 5))]
        parts = [PLAN.rows(document) for document in documents]
        if any(part is None for part in parts):
            continue
        merged += 1
        records = [
            record
            for document in documents
            for record in reference(document).to_dict(orient="records")
        ]
        expected = reference({"dataframe_records": records})
        built = PLAN.build([part for part in parts if part is not None])
        pd.testing.assert_frame_equal(built, expected, check_exact=True)


@pytest.mark.parametrize(
    "document",
    [
        {"dataframe_split": {"columns": NAMES, "data": [[1, 1.5, "a", True]], "index": [5]}},
        {"dataframe_split": {"columns": NAMES, "data": [[1, 1.5, "a"]]}},
        {"dataframe_split": {"columns": [*NAMES, "extra"], "data": [[1, 1.5, "a", True, 0]]}},
        {"dataframe_split": {"columns": NAMES, "data": [[True, 1.5, "a", True]]}},
        {"dataframe_split": {"columns": NAMES, "data": [[1, 1.5, None, True]]}},
        {"dataframe_split": {"columns": NAMES, "data": []}},
        {
            "dataframe_records": [
                {"age": 1, "income": 1.5, "plan": "a", "vip": True},
                {"income": 1.5, "age": 1, "plan": "a", "vip": True},
            ]
        },
        {"inputs": {"age": [1], "income": [1.5], "plan": ["a"], "vip": [True]}},
    ],
    ids=[
        "index",
        "ragged",
        "extra column",
        "bool as long",
        "null string",
        "no rows",
        "records in two orders",
        "inputs",
    ],
)
def test_anything_unusual_goes_to_mlflow(document: dict[str, Any]) -> None:
    assert PLAN is not None
    assert PLAN.rows(document) is None


def test_signatures_it_cannot_build_get_no_plan() -> None:
    tensor_like = Schema([ColSpec("long", "a"), ColSpec("datetime", "when")])
    assert (
        make_plan(Model(signature=ModelSignature(inputs=tensor_like)), tensor_like, reference)
        is None
    )
    assert make_plan(Model(), None, reference) is None


@pytest.mark.parametrize(
    "types",
    [("long", "double", "long"), ("double", "double"), ("long",), ("double", "long")],
)
def test_the_columns_of_numeric_rows_stack_into_what_numpy_makes_of_their_frame(
    types: tuple[str, ...],
) -> None:
    names = [f"c{i}" for i in range(len(types))]
    schema = Schema([ColSpec(kind, name) for kind, name in zip(types, names, strict=True)])
    metadata = Model(signature=ModelSignature(inputs=schema))

    def numeric_reference(document: dict[str, Any]) -> Any:
        return _enforce_schema(payload.parse_json(document, metadata, schema).data, schema)

    plan = make_plan(metadata, schema, numeric_reference)
    assert plan is not None
    rng = random.Random(len(types))
    parts = []
    for _ in range(4):
        data = [
            [
                rng.randint(-(2**40), 2**40) if kind == "long" else rng.uniform(-1e9, 1e9)
                for kind in types
            ]
            for _ in range(rng.randint(1, 5))
        ]
        rows = plan.rows({"dataframe_split": {"columns": names, "data": data}})
        assert rows is not None
        parts.append(rows)
    for chosen in (parts[:1], parts):
        frame = plan.build(chosen)
        expected = np.asarray(frame)
        stack = numeric_stack(plan, range(len(types)))
        assert stack is not None
        array = stack(plan.columns(chosen))
        assert all(
            np.array_equal(a, b)
            for a, b in zip(plan.columns_of(frame), plan.columns(chosen), strict=True)
        )
        assert array.dtype == expected.dtype
        assert array.flags.f_contiguous == expected.flags.f_contiguous
        np.testing.assert_array_equal(array, expected)
