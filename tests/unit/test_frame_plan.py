"""The fast frame plan gives exactly MLflow's frame, or steps aside."""

import math
import random
from typing import Any

import pandas as pd
import pytest
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from gateway import payload
from gateway.frame_plan import make_plan

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
    """MLflow's own parse, without the plan."""
    return payload.parse_json(document, METADATA, SCHEMA).data


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
    typed = {
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
        fast = PLAN.frame(document)
        if fast is None:
            continue
        built += 1
        pd.testing.assert_frame_equal(fast, reference(document), check_exact=True)
    # The common, well-typed request does take the fast path.
    assert built > 1000


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
    assert PLAN.frame(document) is None


def test_signatures_it_cannot_build_get_no_plan() -> None:
    tensor_like = Schema([ColSpec("long", "a"), ColSpec("datetime", "when")])
    assert (
        make_plan(Model(signature=ModelSignature(inputs=tensor_like)), tensor_like, reference)
        is None
    )
    assert make_plan(Model(), None, reference) is None
