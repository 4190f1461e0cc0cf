"""A fast, exact way to the model's DataFrame for the common request (pure, no I/O).

MLflow builds a DataFrame from rows and then casts every column to the signature's type, making a
new column Index (pyarrow-backed strings in pandas 3) on every request: ~0.5 ms for one row. A
plan, made once per model version, builds the same frame from one typed array a column and a
cached Index (~0.06 ms). It only takes requests whose every value already has its column's
exact JSON type (ints for `long`, numbers for `double`, strings for `string`, booleans for
`boolean`) and whose columns are exactly the signature's; anything else returns None and goes
through MLflow's own parser, which stays the reference: the tests compare both.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

# The signature types a plan handles, and the value types each accepts (bool is not an int here).
_ACCEPTS: dict[str, tuple[type, ...]] = {
    "long": (int,),
    "double": (int, float),
    "string": (str,),
    "boolean": (bool,),
}
_SAMPLE: dict[str, Any] = {"long": 1, "double": 0.5, "string": "a", "boolean": True}


@dataclass(frozen=True)
class FramePlan:
    """How to build the model's frame for one column order; see `make_plan`."""

    names: tuple[str, ...]
    dtypes: dict[str, Any]
    accepts: dict[str, tuple[type, ...]]

    def frame(self, document: dict[str, Any]) -> pd.DataFrame | None:
        """The frame for a `dataframe_split` or `dataframe_records` document, or None."""
        split = document.get("dataframe_split")
        if split is not None:
            if "dataframe_records" in document or not isinstance(split, dict):
                return None
            columns, rows = split.get("columns"), split.get("data")
            if (
                set(split) != {"columns", "data"}
                or not isinstance(columns, list)
                or not isinstance(rows, list)
            ):
                return None
            if not all(isinstance(row, list) and len(row) == len(columns) for row in rows):
                return None
            return self._build(columns, lambda i: [row[i] for row in rows], len(rows))
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
        return self._build(order, lambda i: [record[order[i]] for record in records], len(records))

    def _build(self, columns: Sequence[Any], column: Any, length: int) -> pd.DataFrame | None:
        if length == 0 or len(columns) != len(self.names) or set(columns) != set(self.names):
            return None
        arrays = []
        for index, name in enumerate(columns):
            values = column(index)
            accepts = self.accepts[name]
            if not all(type(value) in accepts for value in values):
                return None
            dtype = self.dtypes[name]
            try:
                arrays.append(
                    np.array(values, dtype=dtype)
                    if isinstance(dtype, np.dtype)
                    else pd.array(values, dtype=dtype)
                )
            except (OverflowError, ValueError, TypeError):
                return None
        return _from_arrays(arrays, _index(tuple(columns)), length)


def make_plan(metadata: Any, input_schema: Any, reference: Any) -> FramePlan | None:
    """A plan for a signature of named scalar columns, or None for any other signature.

    `reference(document)` is MLflow's parser: the plan takes each column's dtype from what it
    makes of a sample row, so that both give the same frame.
    """
    from mlflow.types.schema import ColSpec, DataType

    if input_schema is None or not input_schema.has_input_names():
        return None
    if getattr(metadata, "_is_signature_from_type_hint", lambda: False)():
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
    dtypes = {name: sample[name].dtype for name in names}
    return FramePlan(names, dtypes, {name: _ACCEPTS[kinds[name]] for name in names})


# Column Indexes by column order; only orders of a signature's own names get here, and at most
# this many are kept, so clients cannot grow it without bound.
_INDEXES: dict[tuple[Any, ...], pd.Index] = {}
_MAX_INDEXES = 256


def _index(columns: tuple[Any, ...]) -> pd.Index:
    """The column Index for this order, made once: pandas 3 makes it from pyarrow strings."""
    index = _INDEXES.get(columns)
    if index is None:
        index = pd.Index(list(columns))
        if len(_INDEXES) < _MAX_INDEXES:
            _INDEXES[columns] = index
    return index


def _from_arrays(arrays: list[Any], columns: pd.Index, length: int) -> pd.DataFrame:
    # pandas' own constructor for ready columns, skipping the checks a plan has already made.
    frame: pd.DataFrame = pd.DataFrame._from_arrays(  # type: ignore[attr-defined]
        arrays, columns=columns, index=pd.RangeIndex(length), verify_integrity=False
    )
    return frame
