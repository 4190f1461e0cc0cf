"""Planned frames of scikit-learn models predicted as arrays: the same predictions, less work.

scikit-learn checks a DataFrame's feature names and dtypes on every `predict` call, then predicts
`np.asarray(frame)`. With pandas 3 and scikit-learn 1.9 that check is ~0.9 ms of a 1.1 ms
LogisticRegression predict of one row. For a frame that the model's frame plan built, the gateway
already knows what the check finds: the signature's columns, in its order, with the plan's dtypes.
When those are the estimator's own `feature_names_in_`, in the same order, the gateway hands the
estimator that array itself: `FramePlan.array` builds it from the parsed rows without a frame
(`np.asarray(frame)` for a frame built already, as for rows routed one by one).

Only where that is the same by construction:

- the model is MLflow's sklearn flavor, and its estimator is a scikit-learn class that is not a
  meta-estimator: no estimator among its parameters (a Pipeline's or a VotingClassifier's steps
  may select columns by name), and no fitted part of it other than itself knows feature names;
- every column of the plan has a numeric numpy dtype (no strings, booleans or extension types);
- the estimator was fitted on exactly those columns in that order, or on an array of as many;
- the request has no params (the sklearn flavor ignores them, but MLflow checks them).

The estimator called is a shallow copy without `feature_names_in_`, so that scikit-learn does not
warn that an array has no feature names; it shares every fitted array with the original. A
forest on one thread averages its trees in turn without joblib's per-tree wrapper (see
`compat.sklearn_forest_in_turn`): the same sum in the same order, a quarter of the time. Every
other request goes through MLflow's pyfunc `predict`, which stays the reference: the tests
compare both, prediction for prediction.
"""

import copy
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from gateway.protocol import compat
from gateway.protocol.frame_plan import FramePlan

# What a direct call takes (the array of a plan's rows, or a frame the plan built) and returns
# (the estimator's predictions).
Direct = Callable[[Any], Any]
NUMERIC_KINDS = "fiu"


def direct_predict(pyfunc: Any, plan: FramePlan | None) -> Direct | None:
    """The model's `predict` for its plan's frames as a direct estimator call, or None."""
    if plan is None or not all(
        isinstance(dtype, np.dtype) and dtype.kind in NUMERIC_KINDS for dtype in plan.dtypes
    ):
        return None
    found = compat.sklearn_predict_method(pyfunc)
    if found is None:
        return None
    estimator, method = found
    if not type(estimator).__module__.startswith("sklearn.") or not _fitted_on(
        estimator, plan.names
    ):
        return None
    try:
        parameters = estimator.get_params(deep=False)
    except Exception:  # an estimator that cannot list its parameters is not one to reason about
        return None
    if any(True for value in parameters.values() for _ in _estimators_in(value)):
        return None
    parts = [
        part
        for name, value in vars(estimator).items()
        if name != "feature_names_in_"
        for part in _estimators_in(value)
    ]
    if any(hasattr(part, "feature_names_in_") for part in parts):
        return None
    bare = copy.copy(estimator)
    vars(bare).pop("feature_names_in_", None)
    in_turn = compat.sklearn_forest_in_turn(bare)
    if in_turn is not None:
        name, averaged = in_turn
        setattr(bare, name, averaged)
    predict = getattr(bare, method)

    def call(frame: Any) -> Any:
        return predict(np.asarray(frame))

    return call


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
