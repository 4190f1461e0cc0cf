"""Every private MLflow, pandas and scikit-learn hook the gateway relies on, in one place, each
behind a function.

The gateway answers byte for byte like `mlflow models serve` because it calls the scoring server's
own parsing, schema enforcement and encoding. Several of those functions are private, and so are
the two pandas constructors the fast frame path uses, and the pieces of scikit-learn (a forest's
predict, a ColumnTransformer's column selection, an estimator's output container) that the direct
path calls or reads. Each is reached only through this module, and
`tests/unit/test_compat.py` has one test per hook, so a release that moves one fails loudly
there, naming it, instead of somewhere down the request path.
"""

import copy
import threading
from collections.abc import Callable
from io import StringIO
from typing import IO, Any

import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.models.utils import _enforce_schema
from mlflow.pyfunc import scoring_server
from mlflow.utils.proto_json_utils import NumpyEncoder, _get_jsonable_obj

__all__ = [
    "NumpyEncoder",
    "concat_extension_arrays",
    "encode_predictions",
    "enforce_schema",
    "frame_from_arrays",
    "is_unified_llm_input",
    "jsonable",
    "parse_csv",
    "parse_json_document",
    "parse_parquet",
    "signature_from_type_hints",
    "sklearn_column_indices",
    "sklearn_forest_in_turn",
    "sklearn_predict_method",
    "sklearn_transform_output",
    "without_input_enforcement",
]


def parse_json_document(document: dict[str, Any], metadata: Any, input_schema: Any) -> Any:
    """MLflow's parse of a JSON request (`_parse_json_data`): an object with data, params, is_unified_llm_input."""
    return scoring_server._parse_json_data(document, metadata, input_schema)


def parse_csv(text: IO[str], input_schema: Any) -> Any:
    """MLflow's parse of a CSV request, typed by the signature."""
    return scoring_server.parse_csv_input(text, input_schema)


def parse_parquet(data: IO[bytes]) -> Any:
    """MLflow's parse of a Parquet request."""
    return scoring_server.parse_parquet_input(data)


def is_unified_llm_input(document: dict[str, Any]) -> bool:
    """Whether MLflow takes a JSON request for the unified LLM format (answered unwrapped)."""
    return bool(scoring_server.is_unified_llm_input(document))


def encode_predictions(raw: Any, unwrapped: bool) -> bytes:
    """The response body `mlflow models serve` writes for these predictions."""
    out = StringIO()
    if unwrapped:
        scoring_server.unwrapped_predictions_to_json(raw, out)
    else:
        scoring_server.predictions_to_json(raw, out)
    return out.getvalue().encode("utf-8")


def jsonable(raw: Any) -> Any:
    """Predictions as the JSON-ready value MLflow's encoder makes of them (records for frames)."""
    return _get_jsonable_obj(raw, pandas_orient="records")


def enforce_schema(data: Any, input_schema: Any) -> Any:
    """What `predict` hands the model for `data`: MLflow's input-schema enforcement."""
    return _enforce_schema(data, input_schema)


def signature_from_type_hints(metadata: Any) -> bool:
    """Whether the model's signature comes from type hints or an example (MLflow checks those itself)."""
    return any(
        getattr(metadata, hook, lambda: False)()
        for hook in ("_is_signature_from_type_hint", "_is_type_hint_from_example")
    )


def without_input_enforcement(pyfunc: Any) -> Any:
    """The same pyfunc model, sharing its implementation, minus the input-schema enforcement.

    Only frames built by the model's FramePlan go to it: they are already exactly what MLflow's
    enforcement returns, so enforcing again would change nothing and cost ~0.3 ms a call.
    Everything else `predict` does (params, prediction context, tracing) is MLflow's own code.
    """
    metadata = copy.copy(pyfunc.metadata)
    signature = metadata.signature
    metadata.signature = (
        None
        if signature.outputs is None and signature.params is None
        else ModelSignature(inputs=None, outputs=signature.outputs, params=signature.params)
    )
    planned = copy.copy(pyfunc)
    planned._model_meta = metadata
    return planned


def frame_from_arrays(arrays: list[Any], columns: pd.Index, length: int) -> pd.DataFrame:
    """pandas' own constructor for ready columns, without the checks a frame plan has made."""
    frame: pd.DataFrame = pd.DataFrame._from_arrays(  # type: ignore[attr-defined]
        arrays, columns=columns, index=pd.RangeIndex(length), verify_integrity=False
    )
    return frame


def concat_extension_arrays(arrays: list[Any]) -> Any:
    """Several pandas extension arrays of one type as one (the interface's own concatenation)."""
    return type(arrays[0])._concat_same_type(arrays)


def sklearn_predict_method(pyfunc: Any) -> tuple[Any, str] | None:
    """The estimator of an `mlflow.sklearn` pyfunc model and the name of the method it predicts
    with (`predict`, or the `pyfunc_predict_fn` it was logged with); None for any other model.

    MLflow's sklearn wrapper (`_SklearnModelWrapper`) hands `predict`'s input to the estimator
    unchanged and ignores params; the pyfunc model calls the wrapper method in `_predict_fn`.
    """
    implementation = getattr(pyfunc, "_model_impl", None)
    estimator = getattr(implementation, "sklearn_model", None)
    method = getattr(pyfunc, "_predict_fn", None)
    if (
        estimator is None
        or method is None
        or type(implementation).__name__ != "_SklearnModelWrapper"
    ):
        return None
    owner = getattr(method, "__self__", None)
    wrapper_predict = getattr(type(implementation), "predict", None)
    if owner is implementation and getattr(method, "__func__", None) is wrapper_predict:
        return estimator, "predict"
    if owner is estimator:
        return estimator, method.__name__
    return None


def sklearn_forest_in_turn(forest: Any) -> tuple[str, Callable[[Any], Any]] | None:
    """For a scikit-learn forest that predicts on one thread, the name of the method that averages
    its trees (`predict_proba` for a classifier, `predict` for a regressor) and that average
    computed tree after tree in the forest's own order; None for any other estimator.

    With `n_jobs` unset, scikit-learn's forest already predicts its trees one after the other, in
    order, but through joblib's `Parallel` and scikit-learn's `delayed` wrapper, which replays the
    caller's configuration and ~15 warning filters for every tree: ~1.1 ms of a 1.5 ms
    `predict_proba` of one row by 15 trees. This calls the same private pieces the forest's
    method does (`_validate_X_predict`, then `_accumulate_prediction` for each tree) in the same
    order, so the sum, and so each float, is the same. A classifier's `predict`,
    `predict_log_proba` and the others call `self.predict_proba`, so they follow.
    """
    from sklearn.ensemble import _forest

    if getattr(forest, "n_jobs", 0) not in (None, 1) or getattr(forest, "verbose", 1) != 0:
        return None
    cls = type(forest)
    if isinstance(forest, _forest.ForestClassifier):
        name, original = "predict_proba", _forest.ForestClassifier.predict_proba
    elif isinstance(forest, _forest.ForestRegressor):
        name, original = "predict", _forest.ForestRegressor.predict
    else:
        return None
    trees = list(getattr(forest, "estimators_", ()))
    if (
        getattr(cls, name) is not original
        or not trees
        or not all(type(tree).__module__.startswith("sklearn.tree.") for tree in trees)
    ):
        return None
    accumulate = _forest._accumulate_prediction
    outputs = getattr(forest, "n_outputs_", 1)
    classes = np.atleast_1d(getattr(forest, "n_classes_", 1))

    def averaged(data: Any) -> Any:
        rows = forest._validate_X_predict(data)
        if name == "predict_proba":
            out = [np.zeros((rows.shape[0], count), dtype=np.float64) for count in classes]
        else:
            shape = (rows.shape[0], outputs) if outputs > 1 else (rows.shape[0],)
            out = [np.zeros(shape, dtype=np.float64)]
        lock = threading.Lock()
        for tree in trees:
            accumulate(getattr(tree, name), rows, out, lock)
        for total in out:
            total /= len(trees)
        return out[0] if len(out) == 1 else out

    return name, averaged


def sklearn_column_indices(column_transformer: Any) -> dict[str, list[int]] | None:
    """A fitted ColumnTransformer's columns for each of its transformers (the remainder
    included), as positions in its `feature_names_in_`; None if it does not keep them.

    That map (`_transformer_to_input_indices`) is what the ColumnTransformer's own `transform`
    selects a DataFrame's columns by, when it was fitted on one.
    """
    indices = getattr(column_transformer, "_transformer_to_input_indices", None)
    if not isinstance(indices, dict):
        return None
    return {str(name): [int(i) for i in chosen] for name, chosen in indices.items()}


def sklearn_transform_output(estimator: Any) -> str:
    """The container an estimator's `transform` returns dense output in: "default" (a numpy
    array), or "pandas"/"polars" set by `set_output` or by scikit-learn's global configuration."""
    from sklearn.utils._set_output import _get_output_config

    return str(_get_output_config("transform", estimator)["dense"])
