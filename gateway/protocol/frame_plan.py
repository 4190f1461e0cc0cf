"""A fast, exact way to the model's DataFrame for the common request (pure, no I/O).

MLflow builds a DataFrame from rows and casts every column to the signature's type, making a new
column Index (pyarrow-backed strings in pandas 3) on every request: ~0.5 ms for one row; then
`predict` enforces the schema again (~0.3 ms): reorders the columns and checks every type. A
plan, made once per model version, builds the frame that enforcement would hand to the model from
one typed array a column and a cached Index (~0.03 ms), so its frames can skip enforcement. It
only takes requests whose every value already has its column's exact JSON type (ints for `long`,
numbers for `double`, strings for `string`, booleans for `boolean`) and whose columns are exactly
the signature's, in any order; anything else returns None and goes through MLflow's own parser,
which stays the reference: the tests compare both. Rows of several requests can be built into one
frame, for adaptive batching.
"""

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from gateway.protocol import compat

# The signature types a plan handles, and the value types each accepts (bool is not an int here).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "long": (int,),
    "double": (int, float),
    "string": (str,),
    "boolean": (bool,),
}
_SAMPLE: dict[str, Any] = {"long": 1, "double": 0.5, "string": "a", "boolean": True}


@dataclass(frozen=True)
class PlannedRows:
    """One request's rows as typed arrays, one a column in the signature's order."""

    arrays: tuple[Any, ...]
    length: int


@dataclass(frozen=True)
class FramePlan:
    """How to build the model's frame for one signature; see `make_plan`.

    Frames are built in the signature's column order with the signature's dtypes: what MLflow's
    schema enforcement makes of a request before `predict`, so a planned frame can skip it.
    """

    names: tuple[str, ...]
    dtypes: tuple[Any, ...]
    accepts: tuple[tuple[type, ...], ...]
    index: pd.Index = field(compare=False)

    def rows(self, document: dict[str, Any]) -> PlannedRows | None:
        """The typed columns of a `dataframe_split` or `dataframe_records` document, or None."""
        split = document.get("dataframe_split")
        if split is not None:
            if "dataframe_records" in document or not isinstance(split, dict):
                return None
            columns, data = split.get("columns"), split.get("data")
            if (
                set(split) != {"columns", "data"}
                or not isinstance(columns, list)
                or not isinstance(data, list)
            ):
                return None
            if not all(isinstance(row, list) and len(row) == len(columns) for row in data):
                return None
            return self._typed(columns, lambda i: [row[i] for row in data], len(data))
        records = document.get("dataframe_records")
        if (
            not isinstance(records, list)
            or not records
            or not all(isinstance(r, dict) for r in records)
        ):
            return None
        order = list(records[0])
        if not all(list(record) == order for record in records):
            return None
        return self._typed(order, lambda i: [record[order[i]] for record in records], len(records))

    def build(self, parts: Sequence[PlannedRows]) -> pd.DataFrame:
        """One frame of every part's rows, in order: several requests' rows predicted as one."""
        return compat.frame_from_arrays(
            self.columns(parts), self.index, sum(part.length for part in parts)
        )

    def columns(self, parts: Sequence[PlannedRows]) -> list[Any]:
        """The rows of every part, in order, as one array a column in the signature's order: what
        a direct call (`gateway.serving.direct`) takes, without building the frame."""
        if len(parts) == 1:
            return list(parts[0].arrays)
        return [
            _concatenate([part.arrays[column] for part in parts])
            for column in range(len(self.names))
        ]

    def columns_of(self, frame: pd.DataFrame) -> list[Any]:
        """The columns of a frame this plan built (or rows of one), as `columns` gives them."""
        return [frame.iloc[:, column].to_numpy() for column in range(len(self.names))]

    def _typed(self, columns: Sequence[Any], column: Any, length: int) -> PlannedRows | None:
        if length == 0 or len(columns) != len(self.names):
            return None
        try:
            position = {name: columns.index(name) for name in self.names}
        except ValueError:  # one of the signature's columns is missing (so another is extra)
            return None
        arrays = []
        for name, dtype, accepts in zip(self.names, self.dtypes, self.accepts, strict=True):
            values = column(position[name])
            if not all(type(value) in accepts for value in values):
                return None
            try:
                arrays.append(
                    np.array(values, dtype=dtype)
                    if isinstance(dtype, np.dtype)
                    else pd.array(values, dtype=dtype)
                )
            except (OverflowError, ValueError, TypeError):
                return None
        return PlannedRows(tuple(arrays), length)


def make_plan(metadata: Any, input_schema: Any, reference: Any) -> FramePlan | None:
    """A plan for a signature of named scalar columns, or None for any other signature.

    `reference(document)` is the frame MLflow hands the model for a document (its parser, then
    its schema enforcement): the plan takes each column's dtype from what it makes of a sample
    row, so that both give the same frame.
    """
    from mlflow.types.schema import ColSpec, DataType

    if input_schema is None or not input_schema.has_input_names():
        return None
    # Signatures from type hints are checked by the model itself, and frames of models typed by an
    # example are converted to the example's format: both are MLflow's business alone.
    if compat.signature_from_type_hints(metadata):
        return None
    inputs = input_schema.inputs
    kinds = {}
    for spec in inputs:
        if (
            not isinstance(spec, ColSpec)
            or not isinstance(spec.type, DataType)
            or not spec.required
        ):
            return None
        if spec.type.name not in _ACCEPTS:
            return None
        kinds[spec.name] = spec.type.name
    names = tuple(kinds)
    sample = reference(
        {"dataframe_split": {"columns": list(names), "data": [[_SAMPLE[kinds[n]] for n in names]]}}
    )
    if not isinstance(sample, pd.DataFrame) or tuple(sample.columns) != names:
        return None
    return FramePlan(
        names,
        tuple(sample[name].dtype for name in names),
        tuple(_ACCEPTS[kinds[name]] for name in names),
        pd.Index(list(names)),
    )


def _concatenate(arrays: Sequence[Any]) -> Any:
    first = arrays[0]
    if isinstance(first, np.ndarray):
        return np.concatenate(arrays)
    return compat.concat_extension_arrays(list(arrays))
