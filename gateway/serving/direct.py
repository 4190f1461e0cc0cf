"""Planned frames of scikit-learn models predicted from arrays: the same predictions, less work.

scikit-learn checks a DataFrame's feature names and dtypes on every `predict` call, then predicts
`np.asarray(frame)`. With pandas 3 and scikit-learn 1.9 that check is ~0.9 ms of a 1.1 ms
LogisticRegression predict of one row. For a frame that the model's frame plan built, the gateway
already knows what the check finds: the signature's columns, in its order, with the plan's dtypes.
A direct call takes the plan's columns (one array each, in the signature's order) and hands each
estimator the array that scikit-learn would have made of the frame itself.

Only where that is the same by construction:

- the model is MLflow's sklearn flavor and the request has no params (the sklearn flavor ignores
  them, but MLflow checks them);
- the estimator is a plain one: a scikit-learn class, no estimator among its parameters (a
  VotingClassifier's estimators may select columns by name), no fitted part of it other than
  itself that knows feature names, fitted on exactly the plan's columns in that order (or on an
  array of as many), all of them of a numeric numpy dtype; it gets `np.asarray(frame)`;
- or a `Pipeline` (metadata routing off, no step set to return DataFrames) whose first step is
  a `ColumnTransformer` as below or one of its parts as below, fitted on the plan's columns (a
  lone step: such a plain estimator), and whose later steps are plain estimators fitted on
  arrays, which is what the steps before them hand on. Other first steps may read the frame
  itself (a FunctionTransformer selecting columns by name): they keep MLflow's path.

A ColumnTransformer is taken when it was fitted on exactly the plan's columns, in that order,
returns a dense array (`sparse_output_` false, no transformer weights, no `set_output`), and
each of its transformers is dropped or one of `SCALERS` on numeric columns or `ENCODERS` on
columns of one dtype. Its `transform` selects each transformer's columns by name, hands each
transformer that sub-frame, and stacks the outputs, sparse ones made dense. A scaler validates a
sub-frame into the array of its columns in their common dtype; an encoder validates a sub-frame
column by column, each into a 1-D array of its values (a string column into an object array of
Python strings). The direct call builds those arrays from the plan's columns and stacks the
transformers' outputs the same way.

Within a ColumnTransformer, an encoder whose known categories make at most
`MEMOIZED_COMBINATIONS` rows is called once, when the model loads, on every such row: a request
whose rows are all among them gets those rows of that one output, dense, as the ColumnTransformer
would have made them. An encoder maps each row on its own, so the rows are the ones its
`transform` returns for them; any other row (an unknown category, a missing value) sends the
whole request to `transform`, with its warnings and errors. For the demo's pipeline this is
most of a lone call's time: a call takes ~0.22 ms instead of ~0.6.

The estimators and transformers called are shallow copies without `feature_names_in_`, so that
scikit-learn does not warn that an array has no feature names; they share every fitted array with
the originals. A forest on one thread averages its trees in turn without joblib's per-tree
wrapper (see `compat.sklearn_forest_in_turn`): the same sum in the same order, a quarter of the
time. Every other request goes through MLflow's pyfunc `predict`, which stays the reference: the
tests compare both, prediction for prediction.
"""

import copy
import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import sparse

from gateway.protocol import compat
from gateway.protocol.frame_plan import FramePlan

# What a direct call takes (the plan's columns: one array each, in the signature's order) and
# returns (the model's predictions); a step of one takes and returns arrays.
Direct = Callable[[Sequence[Any]], Any]
Step = Callable[[Any], Any]
NUMERIC_KINDS = "fiu"
# ColumnTransformer parts whose `transform` of a validated array is their `transform` of the
# DataFrame it was validated from: scalers of numbers, and encoders, which keep each column's
# dtype. Each is tested against MLflow's predictions of a pipeline that uses it.
# Exact classes of `sklearn.preprocessing`: a subclass may transform otherwise.
SCALERS = frozenset({"StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler"})
ENCODERS = frozenset({"OneHotEncoder", "OrdinalEncoder"})
ENCODED_KINDS = "biufO"
# The Pipeline methods that MLflow's sklearn flavor predicts with and that are the steps'
# `transform` in turn, then the last step's own method.
PIPELINE_METHODS = frozenset({"predict", "predict_proba", "predict_log_proba"})
# An encoder of a ColumnTransformer whose known categories make at most this many rows has
# its output for each of them computed once, when the model loads.
MEMOIZED_COMBINATIONS = 1024


def direct_predict(pyfunc: Any, plan: FramePlan | None) -> Direct | None:
    """The model's `predict` for its plan's columns as direct estimator calls, or None."""
    if plan is None:
        return None
    found = compat.sklearn_predict_method(pyfunc)
    if found is None:
        return None
    estimator, method = found
    from sklearn.pipeline import Pipeline

    if type(estimator) is Pipeline:
        return _pipeline(estimator, method, plan)
    return _on_plan(estimator, method, plan)


def _on_plan(estimator: Any, method: str, plan: FramePlan) -> Direct | None:
    """A plain estimator's `method` on the plan's columns, all numeric, or None."""
    positions = range(len(plan.names))
    stack = numeric_stack(plan, positions)
    if stack is None or not _plain(estimator) or not _fitted_on(estimator, plan.names):
        return None
    call = getattr(_bare(estimator), method)

    def predict(columns: Sequence[Any]) -> Any:
        return call(stack(columns))

    return predict


def _pipeline(pipeline: Any, method: str, plan: FramePlan) -> Direct | None:
    """A Pipeline's `method`: its first step on the plan's columns, the others on arrays."""
    import sklearn
    from sklearn.compose import ColumnTransformer

    if method not in PIPELINE_METHODS or sklearn.get_config().get("enable_metadata_routing"):
        return None
    steps = [
        step for _, step in pipeline.steps if step is not None and not _is(step, "passthrough")
    ]
    if not steps or any(compat.sklearn_transform_output(step) != "default" for step in steps):
        return None
    first, later = steps[0], steps[1:]
    head: Direct | None
    if type(first) is ColumnTransformer:
        head = _column_transformer(first, plan) if later else None
    elif later:  # a transformer of the frame: one that validates it as a ColumnTransformer part
        head = _part(first, plan, range(len(plan.names))) if _fitted_on(first, plan.names) else None
    else:
        head = _on_plan(first, method, plan)
    if head is None or not hasattr(steps[-1], method):
        return None
    if not all(_plain(step) and not hasattr(step, "feature_names_in_") for step in later):
        return None
    calls = [_bare(step).transform for step in later[:-1]]
    calls += [getattr(_bare(step), method) for step in later[-1:]]

    def predict(columns: Sequence[Any]) -> Any:
        data = head(columns)
        for call in calls:
            data = call(data)
        return data

    return predict


def _column_transformer(transformer: Any, plan: FramePlan) -> Direct | None:
    """A fitted ColumnTransformer's `transform` of the plan's columns, or None."""
    fitted = getattr(transformer, "feature_names_in_", None)
    indices = compat.sklearn_column_indices(transformer)
    if (
        fitted is None
        or [str(name) for name in fitted] != list(plan.names)
        or indices is None
        or getattr(transformer, "sparse_output_", True)
        or transformer.transformer_weights
    ):
        return None
    parts: list[Direct] = []
    for name, part, columns in transformer.transformers_:
        if _is(part, "drop") or not indices.get(name):
            continue  # scikit-learn skips dropped transformers and empty selections alike
        if isinstance(columns, str) or np.isscalar(columns) or _is(part, "passthrough"):
            return None  # a scalar selection hands on 1-D data; passthrough hands on the frame
        call = _part(part, plan, indices[name], dense=True)
        if call is None:
            return None
        parts.append(call)
    if not parts:
        return None

    def transform(columns: Sequence[Any]) -> Any:
        outputs = [part(columns) for part in parts]
        return np.hstack([out.toarray() if sparse.issparse(out) else out for out in outputs])

    return transform


def _part(
    part: Any, plan: FramePlan, positions: Sequence[int], *, dense: bool = False
) -> Direct | None:
    """One ColumnTransformer part's `transform` of its columns of the plan, or None; with
    `dense`, an encoder's output may be dense where `transform`'s is sparse."""
    from sklearn import preprocessing

    name = type(part).__name__
    if type(part) is not getattr(preprocessing, name, None):
        return None
    if name in SCALERS:
        stack = numeric_stack(plan, positions)
    elif name in ENCODERS:
        stack = _categories(plan, positions)
    else:
        return None
    if stack is None or compat.sklearn_transform_output(part) != "default":
        return None
    call = _bare(part).transform
    if dense and name in ENCODERS:
        memoized = _memoized(part, positions, stack, call)
        if memoized is not None:
            return memoized

    def transform(columns: Sequence[Any]) -> Any:
        return call(stack(columns))

    return transform


def _memoized(part: Any, positions: Sequence[int], stack: Step, call: Step) -> Direct | None:
    """A fitted encoder's dense `transform` from a table of its output for every row of known
    categories, computed now by `call`; None when there are too many, or when the plan's dtype
    would change a category (1.5 of an integer column)."""
    categories = [np.asarray(column).tolist() for column in getattr(part, "categories_", ())]
    if len(categories) != len(positions):
        return None
    if not categories or math.prod(len(c) for c in categories) > MEMOIZED_COMBINATIONS:
        return None
    rows = list(itertools.product(*categories))
    # The plan's columns as `stack` takes them, each category column at its encoder's position.
    columns: list[Any] = [None] * (max(positions) + 1)
    for j, i in enumerate(positions):
        columns[i] = [row[j] for row in rows]
    try:
        known = stack(columns)
    except (TypeError, ValueError, OverflowError):  # a category the plan's dtype cannot hold
        return None
    keys = [tuple(key) for key in known.tolist()]
    if keys != rows:  # the plan's dtype changed a category
        return None
    # Not under `warnings.catch_warnings`: it swaps the process's filters, and a refresh loads
    # models while other threads predict. A warning here is logged once, as a model's warnings
    # are (gateway.observe.quiet); the requests that the table answers would only repeat it.
    try:
        out = call(known)
    except Exception:  # an encoder that cannot take its own categories: no table
        return None
    out = out.toarray() if sparse.issparse(out) else np.asarray(out)
    # The keys are the Python values that `tolist` makes of a request's rows. A NaN is equal
    # only to itself: a row with another NaN object goes to `transform`, which answers it with
    # the same row as the table's.
    table = dict(zip(keys, out, strict=True))

    def transform(columns: Sequence[Any]) -> Any:
        data = stack(columns)
        try:
            found = [table[tuple(row)] for row in data.tolist()]
        except (KeyError, TypeError):  # a category it does not know, or an unhashable value
            return call(data)
        return np.array(found, dtype=out.dtype) if found else call(data)

    return transform


def numeric_stack(plan: FramePlan, positions: Sequence[int]) -> Step | None:
    """How to make of the plan's columns the 2-D array of those at `positions` that `np.asarray`
    makes of their frame: pandas lays its values out one column after another in their common
    dtype, and so does this. None unless every one has a numeric numpy dtype."""
    dtypes = [plan.dtypes[i] for i in positions]
    if not all(isinstance(dtype, np.dtype) and dtype.kind in NUMERIC_KINDS for dtype in dtypes):
        return None
    common = np.result_type(*dtypes)

    def stack(columns: Sequence[Any]) -> Any:
        return np.array([columns[i] for i in positions], dtype=common).T

    return stack


def _categories(plan: FramePlan, positions: Sequence[int]) -> Step | None:
    """A 2-D array of these columns, of one dtype, whose every column is the 1-D array that
    scikit-learn validates a DataFrame's column into; or None for columns of mixed dtypes."""
    dtypes = {str(plan.dtypes[i]) for i in positions}
    dtype = plan.dtypes[positions[0]]
    if len(dtypes) != 1:
        return None
    if isinstance(dtype, pd.StringDtype):
        dtype = np.dtype(object)
    elif not isinstance(dtype, np.dtype) or dtype.kind not in ENCODED_KINDS:
        return None

    def stack(columns: Sequence[Any]) -> Any:
        out = np.empty((len(columns[positions[0]]), len(positions)), dtype=dtype)
        for j, i in enumerate(positions):
            out[:, j] = np.asarray(columns[i], dtype=dtype)
        return out

    return stack


def _plain(estimator: Any) -> bool:
    """A scikit-learn estimator with no estimator among its parameters and no fitted part of it
    other than itself that knows feature names."""
    if not type(estimator).__module__.startswith("sklearn."):
        return False
    try:
        parameters = estimator.get_params(deep=False)
    except Exception:  # an estimator that cannot list its parameters is not one to reason about
        return False
    if any(True for value in parameters.values() for _ in _estimators_in(value)):
        return False
    parts = [
        part
        for name, value in vars(estimator).items()
        if name != "feature_names_in_"
        for part in _estimators_in(value)
    ]
    return not any(hasattr(part, "feature_names_in_") for part in parts)


def _bare(estimator: Any) -> Any:
    """A shallow copy without `feature_names_in_`, a forest's trees averaged in turn."""
    bare = copy.copy(estimator)
    vars(bare).pop("feature_names_in_", None)
    in_turn = compat.sklearn_forest_in_turn(bare)
    if in_turn is not None:
        name, averaged = in_turn
        setattr(bare, name, averaged)
    return bare


def _is(step: Any, word: str) -> bool:
    """Whether a pipeline step or ColumnTransformer part is the string `word`."""
    return isinstance(step, str) and step == word


def _fitted_on(estimator: Any, names: tuple[str, ...]) -> bool:
    """Whether the estimator was fitted on these columns in this order (or unnamed, as many)."""
    fitted = getattr(estimator, "feature_names_in_", None)
    if fitted is None:
        return getattr(estimator, "n_features_in_", None) == len(names)
    return [str(name) for name in fitted] == list(names)


def _estimators_in(value: Any) -> Iterator[Any]:
    """The estimators in a parameter or attribute value: itself, or inside lists, tuples, dicts
    and object arrays (a Pipeline's steps, a forest's trees)."""
    if hasattr(value, "get_params") and not isinstance(value, type):
        yield value
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _estimators_in(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _estimators_in(item)
    elif isinstance(value, np.ndarray) and value.dtype == object:
        for item in value.ravel():
            yield from _estimators_in(item)
