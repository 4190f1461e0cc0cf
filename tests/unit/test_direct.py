"""Planned rows predicted straight on scikit-learn estimators and pipelines: MLflow's predictions,
exactly, or MLflow's own path where that cannot be shown."""

import json
import random
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.models import infer_signature
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    ExtraTreesClassifier,
    GradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
    VotingClassifier,
)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import (
    FunctionTransformer,
    MaxAbsScaler,
    MinMaxScaler,
    OneHotEncoder,
    OrdinalEncoder,
    RobustScaler,
    StandardScaler,
)

from gateway.core.errors import GatewayError
from gateway.protocol import compat, payload
from gateway.serving import direct
from gateway.serving.prediction import goes_direct, model_data, predict_raw
from gateway.serving.registry import LoadedModel, ModelVersion, loaded_model

ROWS = 300


def _training(seed: int = 3) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, ROWS),
            "income": rng.normal(50_000, 15_000, ROWS),
            "calls": rng.integers(0, 12, ROWS),
        }
    )
    labels = (frame["income"] / 10_000 + frame["calls"] - frame["age"] / 20 > 3).astype(int)
    return frame, labels.to_numpy()


def _load(
    directory: Path,
    name: str,
    estimator: Any,
    frame: pd.DataFrame,
    labels: np.ndarray,
    predict_fn: str = "predict",
) -> LoadedModel:
    """Fit, save with MLflow's sklearn flavor (signature from the frame), load as the gateway does."""
    fitted = estimator.fit(frame, labels)
    path = directory / name
    mlflow.sklearn.save_model(
        fitted,
        path,
        signature=infer_signature(frame, fitted.predict(frame)),
        pyfunc_predict_fn=predict_fn,
        serialization_format="cloudpickle",
        pip_requirements=[],
    )
    return loaded_model(ModelVersion(name, "1", None), mlflow.pyfunc.load_model(str(path)))


def _document(rng: random.Random, rows: int, columns: list[str]) -> dict[str, Any]:
    data = [
        [
            rng.randint(0, 100) if name in ("age", "calls") else rng.uniform(-1e5, 2e5)
            for name in columns
        ]
        for _ in range(rows)
    ]
    return {"dataframe_split": {"columns": columns, "data": data}}


def _mlflow_answer(model: LoadedModel, document: dict[str, Any]) -> Any:
    """What `mlflow models serve` predicts: its parse, then the pyfunc model's `predict`."""
    parsed = payload.parse_json(document, model.spec.metadata, model.spec.input_schema)
    return model.pyfunc.predict(parsed.data)


DIRECT_MODELS = {
    "logistic": (LogisticRegression(max_iter=500), "predict"),
    "logistic-proba": (LogisticRegression(max_iter=500), "predict_proba"),
    "forest": (RandomForestClassifier(n_estimators=7, random_state=1), "predict"),
    "forest-proba": (RandomForestClassifier(n_estimators=7, random_state=1), "predict_proba"),
    "extra-trees-proba": (ExtraTreesClassifier(n_estimators=7, random_state=1), "predict_proba"),
    "forest-regressor": (RandomForestRegressor(n_estimators=7, random_state=1), "predict"),
    "threaded-forest": (
        RandomForestClassifier(n_estimators=7, random_state=1, n_jobs=2),
        "predict_proba",
    ),
    "boosting": (GradientBoostingClassifier(n_estimators=10, random_state=1), "predict_proba"),
    "hist-boosting": (HistGradientBoostingRegressor(max_iter=10), "predict"),
    "linear": (LinearRegression(), "predict"),
    "scaled-pipeline": (
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        "predict_proba",
    ),
    "one-step-pipeline": (Pipeline([("model", LinearRegression())]), "predict"),
}


@pytest.fixture(scope="module")
def direct_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    directory = tmp_path_factory.mktemp("direct")
    frame, labels = _training()
    return {
        name: _load(directory, name, estimator, frame, labels, predict_fn)
        for name, (estimator, predict_fn) in DIRECT_MODELS.items()
    }


@pytest.mark.parametrize("name", list(DIRECT_MODELS))
def test_direct_predictions_are_mlflows_exactly(
    direct_models: dict[str, LoadedModel], name: str
) -> None:
    model = direct_models[name]
    assert model.direct is not None
    rng = random.Random(name)
    for _ in range(40):
        columns = rng.sample(["age", "income", "calls"], 3)
        _predicts_as_mlflow(model, _document(rng, rng.choice([1, 2, 7, 32]), columns))


def _predicts_as_mlflow(model: LoadedModel, document: dict[str, Any]) -> None:
    """The document goes direct, from its columns and from a frame its plan built (rows routed
    one by one), with no warning, and gets MLflow's predictions exactly: dtype, values and
    encoded bytes."""
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    assert parsed.plan is not None
    assert goes_direct(model, parsed.plan, parsed.params)
    data = model_data(model, [parsed])
    # One array a column, no frame.
    assert [len(column) for column in data] == [parsed.row_count] * len(parsed.plan.names)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name warning, no unknown-category one
        raw, _, _ = predict_raw(model, data, parsed.params, parsed.plan)
        from_frame, _, _ = predict_raw(model, parsed.frame(), parsed.params, parsed.plan)
    expected = _mlflow_answer(model, document)
    assert raw.dtype == expected.dtype
    np.testing.assert_array_equal(raw, expected)
    np.testing.assert_array_equal(from_frame, expected)
    assert payload.encode_predictions(raw, False) == payload.encode_predictions(expected, False)


def _merged_as_mlflow(model: LoadedModel, documents: list[dict[str, Any]]) -> None:
    """The documents merged into one direct call get MLflow's predictions of each, in order."""
    inputs = [
        payload.parse_json(d, model.spec.metadata, model.spec.input_schema, model.spec.plan)
        for d in documents
    ]
    raw, _, _ = predict_raw(model, model_data(model, inputs), None, inputs[0].plan)
    expected = np.concatenate([_mlflow_answer(model, d) for d in documents])
    np.testing.assert_array_equal(raw, expected)


def test_a_merged_batch_goes_direct_with_the_same_predictions(
    direct_models: dict[str, LoadedModel],
) -> None:
    model = direct_models["forest-proba"]
    rng = random.Random(5)
    documents = [_document(rng, rng.randint(1, 4), ["age", "income", "calls"]) for _ in range(9)]
    _merged_as_mlflow(model, documents)


@pytest.mark.parametrize(
    "name", ["forest", "forest-proba", "extra-trees-proba", "forest-regressor"]
)
def test_a_forest_on_one_thread_predicts_without_joblib(
    direct_models: dict[str, LoadedModel], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = direct_models[name]
    document = _document(random.Random(name), 6, ["age", "income", "calls"])
    expected = _mlflow_answer(model, document)

    def no_parallel(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("joblib.Parallel was called")

    monkeypatch.setattr("joblib.Parallel.__call__", no_parallel)
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    raw, _, _ = predict_raw(model, model_data(model, [parsed]), None, parsed.plan)
    np.testing.assert_array_equal(raw, expected)
    with pytest.raises(AssertionError, match=r"joblib\.Parallel"):
        _mlflow_answer(model, document)  # the forest's own method goes through joblib


def test_a_request_with_params_goes_through_mlflow(direct_models: dict[str, LoadedModel]) -> None:
    model = direct_models["logistic"]
    document = {**_document(random.Random(1), 2, ["age", "income", "calls"]), "params": {}}
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    assert not goes_direct(model, parsed.plan, {"threshold": 0.5})
    assert goes_direct(model, parsed.plan, parsed.params)  # empty params change nothing


def test_a_nan_fails_directly_as_it_fails_through_mlflow(
    direct_models: dict[str, LoadedModel],
) -> None:
    model = direct_models["logistic"]
    document = json.loads(
        '{"dataframe_split": {"columns": ["age", "income", "calls"], "data": [[1, NaN, 2]]}}'
    )
    _fails_alike(model, document)


def _fails_alike(model: LoadedModel, document: dict[str, Any]) -> dict[str, Any]:
    """The document goes direct and fails there with MLflow's own 400; that error's body."""
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    assert goes_direct(model, parsed.plan, parsed.params)
    with pytest.raises(GatewayError) as direct:
        predict_raw(model, model_data(model, [parsed]), parsed.params, parsed.plan)
    with pytest.raises(GatewayError) as through_mlflow:
        predict_raw(model, parsed.frame(), parsed.params)  # no plan: MLflow's whole `predict`
    assert direct.value.to_dict() == through_mlflow.value.to_dict()
    assert direct.value.status_code == 400
    return direct.value.to_dict()


def _not_direct(tmp_path: Path, name: str, estimator: Any, frame: pd.DataFrame) -> None:
    labels = (frame.iloc[:, 0].to_numpy() > frame.iloc[:, 0].median()).astype(int)
    model = _load(tmp_path, name, estimator, frame, labels)
    assert model.direct is None
    document = {
        "dataframe_split": {
            "columns": list(frame.columns),
            "data": frame.head(3).to_numpy().tolist(),
        }
    }
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    assert not goes_direct(model, parsed.plan, parsed.params)


def test_passthrough_columns_and_meta_estimators_go_through_mlflow(tmp_path: Path) -> None:
    frame, _ = _training()
    floats = frame.astype("float64")
    _not_direct(
        tmp_path,
        "columns",
        make_pipeline(
            ColumnTransformer([("scale", StandardScaler(), ["income"])], remainder="passthrough"),
            LogisticRegression(max_iter=5000),
        ),
        floats,
    )
    _not_direct(
        tmp_path,
        "voting",
        VotingClassifier(
            [
                ("a", LogisticRegression(max_iter=5000)),
                ("b", LogisticRegression(C=0.1, max_iter=5000)),
            ]
        ),
        floats,
    )


def test_models_whose_columns_are_not_plain_numbers_go_through_mlflow(tmp_path: Path) -> None:
    frame, _ = _training()
    flagged = frame.assign(vip=frame["calls"] > 5)
    _not_direct(tmp_path, "booleans", LogisticRegression(max_iter=5000), flagged)


def test_an_estimator_fitted_on_other_column_order_goes_through_mlflow(tmp_path: Path) -> None:
    frame, labels = _training()
    estimator = LogisticRegression(max_iter=500).fit(frame[["income", "age", "calls"]], labels)
    path = tmp_path / "reordered"
    mlflow.sklearn.save_model(
        estimator,
        path,
        signature=infer_signature(frame, labels),  # age, income, calls
        serialization_format="cloudpickle",
        pip_requirements=[],
    )
    model = loaded_model(ModelVersion("reordered", "1", None), mlflow.pyfunc.load_model(str(path)))
    assert model.spec.plan is not None
    assert model.direct is None


def test_an_estimator_fitted_on_an_array_goes_direct(tmp_path: Path) -> None:
    frame, labels = _training()
    estimator = LogisticRegression(max_iter=500).fit(frame.to_numpy(dtype="float64"), labels)
    path = tmp_path / "unnamed"
    mlflow.sklearn.save_model(
        estimator,
        path,
        signature=infer_signature(frame, labels),
        serialization_format="cloudpickle",
        pip_requirements=[],
    )
    model = loaded_model(ModelVersion("unnamed", "1", None), mlflow.pyfunc.load_model(str(path)))
    assert model.direct is not None
    document = _document(random.Random(2), 5, ["age", "income", "calls"])
    parsed = payload.parse_json(
        document, model.spec.metadata, model.spec.input_schema, model.spec.plan
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        raw, _, _ = predict_raw(model, model_data(model, [parsed]), None, parsed.plan)
    with warnings.catch_warnings():
        # MLflow's path hands the model a frame, which it was not fitted on: scikit-learn warns.
        warnings.simplefilter("ignore", UserWarning)
        expected = _mlflow_answer(model, document)
    np.testing.assert_array_equal(raw, expected)


def test_the_original_estimator_keeps_its_feature_names(
    direct_models: dict[str, LoadedModel],
) -> None:
    estimator = direct_models["logistic"].pyfunc._model_impl.sklearn_model
    assert list(estimator.feature_names_in_) == ["age", "income", "calls"]


# Pipelines on named columns of mixed types: the shape of most tabular models in production.
PLANS = ("basic", "plus", "pro")
REGIONS = ("north", "south")


def _customers(seed: int = 4) -> tuple[pd.DataFrame, np.ndarray]:
    frame, labels = _training(seed)
    rng = np.random.default_rng(seed)
    frame["plan"] = rng.choice(PLANS, ROWS)
    frame["region"] = rng.choice(REGIONS, ROWS)
    return frame, labels


def _columns(*parts: tuple[str, Any, list[str]], **options: Any) -> ColumnTransformer:
    return ColumnTransformer(list(parts), **options)


NUMBERS = ["age", "income", "calls"]


class ShiftedScaler(StandardScaler):  # type: ignore[misc]  # scikit-learn is untyped
    """A user's own scaler: scikit-learn's, shifted by one."""

    def transform(self, X: Any, copy: bool | None = None) -> Any:  # noqa: N803 (its parent's name)
        return super().transform(X, copy=copy) + 1.0


PIPELINES = {
    # The demo's shape: numbers scaled, a category one-hot encoded, a logistic regression.
    "scaled-and-one-hot": (
        make_pipeline(
            _columns(
                ("numbers", StandardScaler(), NUMBERS),
                ("plan", OneHotEncoder(handle_unknown="ignore"), ["plan"]),
            ),
            LogisticRegression(max_iter=500),
        ),
        "predict_proba",
    ),
    # Every scaler, an ordinal encoding of two string columns, a second scaler on the stacked
    # array, and a forest whose trees are averaged in turn.
    "every-part-then-forest": (
        make_pipeline(
            _columns(
                ("age", MinMaxScaler(), ["age"]),
                ("income", RobustScaler(), ["income"]),
                ("calls", MaxAbsScaler(), ["calls"]),
                (
                    "codes",
                    OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1),
                    ["plan", "region"],
                ),
            ),
            StandardScaler(),
            RandomForestClassifier(n_estimators=5, random_state=2),
        ),
        "predict",
    ),
    # A dropped transformer, columns left to a dropped remainder, a dense one-hot encoding of two
    # columns with its first category dropped, and an integer column one-hot encoded.
    "dropped-and-dense": (
        make_pipeline(
            _columns(
                ("unused", "drop", ["income"]),
                ("plan", OneHotEncoder(sparse_output=False, drop="first"), ["plan", "region"]),
                ("calls", OneHotEncoder(handle_unknown="ignore"), ["calls"]),
                ("age", StandardScaler(), ["age"]),
            ),
            LogisticRegression(max_iter=500),
        ),
        "predict_log_proba",
    ),
}


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, LoadedModel]:
    directory = tmp_path_factory.mktemp("pipelines")
    frame, labels = _customers()
    return {
        name: _load(directory, name, estimator, frame, labels, predict_fn)
        for name, (estimator, predict_fn) in PIPELINES.items()
    }


def _customer_document(rng: random.Random, rows: int, unknown: bool) -> dict[str, Any]:
    """Rows in a random column order; with `unknown`, categories and counts never trained on."""
    plans = PLANS + (("gold",) if unknown else ())
    regions = REGIONS + (("west",) if unknown else ())
    columns = rng.sample([*NUMBERS, "plan", "region"], 5)
    values: dict[str, Callable[[], Any]] = {
        "age": lambda: rng.randint(0, 100),
        "income": lambda: rng.uniform(-1e5, 2e5),
        "calls": lambda: rng.randint(0, 30 if unknown else 11),
        "plan": lambda: rng.choice(plans),
        "region": lambda: rng.choice(regions),
    }
    data = [[values[name]() for name in columns] for _ in range(rows)]
    return {"dataframe_split": {"columns": columns, "data": data}}


@pytest.mark.parametrize("name", list(PIPELINES))
def test_pipelines_of_named_columns_predict_mlflows_exactly(
    pipelines: dict[str, LoadedModel], name: str
) -> None:
    model = pipelines[name]
    assert model.direct is not None
    rng = random.Random(name)
    for _ in range(40):
        rows = rng.choice([1, 2, 7, 32])
        _predicts_as_mlflow(
            model, _customer_document(rng, rows, unknown=name != "dropped-and-dense")
        )


def test_a_merged_batch_of_a_pipeline_goes_direct_with_the_same_predictions(
    pipelines: dict[str, LoadedModel],
) -> None:
    model = pipelines["scaled-and-one-hot"]
    rng = random.Random(8)
    documents = [_customer_document(rng, rng.randint(1, 4), unknown=True) for _ in range(9)]
    _merged_as_mlflow(model, documents)


def test_an_unknown_category_fails_directly_as_it_fails_through_mlflow(tmp_path: Path) -> None:
    frame, labels = _customers()
    model = _load(
        tmp_path,
        "strict",
        make_pipeline(
            _columns(("plan", OneHotEncoder(), ["plan", "region"]), remainder="drop"),
            LogisticRegression(max_iter=500),
        ),
        frame,
        labels,
    )
    assert model.direct is not None
    document = {
        "dataframe_split": {
            "columns": [*NUMBERS, "plan", "region"],
            "data": [[30, 1000.0, 2, "secret-plan", "north"]],
        }
    }
    error = _fails_alike(model, document)
    assert "secret-plan" not in json.dumps(error)


class Counted:
    """A transform that counts its calls."""

    def __init__(self, call: Callable[[Any], Any]) -> None:
        self.call = call
        self.calls = 0

    def __call__(self, data: Any) -> Any:
        self.calls += 1
        return self.call(data)


def _encoder_of(model: LoadedModel, part: str) -> tuple[Any, list[int]]:
    """A loaded pipeline's ColumnTransformer part, and its columns' positions in the plan."""
    found = compat.sklearn_predict_method(model.pyfunc)
    assert found is not None
    transformer = found[0].steps[0][1]
    indices = compat.sklearn_column_indices(transformer)
    assert indices is not None
    return transformer.named_transformers_[part], indices[part]


def test_an_encoder_answers_known_categories_from_its_own_output(
    pipelines: dict[str, LoadedModel],
) -> None:
    model = pipelines["scaled-and-one-hot"]
    plan = model.spec.plan
    assert plan is not None
    encoder, positions = _encoder_of(model, "plan")
    stack = direct._categories(plan, positions)
    assert stack is not None
    transform = Counted(direct._bare(encoder).transform)
    memoized = direct._memoized(encoder, positions, stack, transform)
    assert memoized is not None
    assert transform.calls == 1  # once, for every known category, when the model loads

    columns: list[Any] = [None] * len(plan.names)
    columns[positions[0]] = ["pro", "basic", "pro", "plus"]
    answered = memoized(columns)
    assert transform.calls == 1
    expected = direct._bare(encoder).transform(stack(columns)).toarray()
    assert answered.dtype == expected.dtype
    np.testing.assert_array_equal(answered, expected)

    columns[positions[0]] = ["pro", "gold"]  # a category it never saw: its own transform
    answered = memoized(columns)
    assert transform.calls == 2
    own = direct._bare(encoder).transform(stack(columns))
    np.testing.assert_array_equal(answered.toarray(), own.toarray())


def test_an_encoder_of_too_many_known_rows_has_no_table(tmp_path: Path) -> None:
    frame, labels = _customers()
    wide = [[*PLANS, *(f"plan-{n}" for n in range(40))], [*REGIONS, *(f"r-{n}" for n in range(40))]]
    model = _load(
        tmp_path,
        "wide",
        make_pipeline(
            _columns(
                ("both", OneHotEncoder(categories=wide), ["plan", "region"]), sparse_threshold=0
            ),
            LogisticRegression(max_iter=500),
        ),
        frame,
        labels,
    )
    assert model.spec.plan is not None
    encoder, positions = _encoder_of(model, "both")
    assert len(wide[0]) * len(wide[1]) > direct.MEMOIZED_COMBINATIONS
    stack = direct._categories(model.spec.plan, positions)
    assert stack is not None
    transform = Counted(direct._bare(encoder).transform)
    assert direct._memoized(encoder, positions, stack, transform) is None
    assert transform.calls == 0
    assert model.direct is not None  # still direct, through the encoder's own transform
    _predicts_as_mlflow(model, _customer_document(random.Random(5), 7, unknown=False))


@pytest.mark.parametrize(
    ("name", "estimator"),
    [
        (
            "sparse-output",  # the stacked output stays sparse: scipy's hstack, not numpy's
            make_pipeline(
                _columns(
                    ("plan", OneHotEncoder(), ["plan", "region"]),
                    ("numbers", StandardScaler(), NUMBERS),
                    sparse_threshold=1.0,
                ),
                LogisticRegression(max_iter=500),
            ),
        ),
        (
            "pandas-output",  # the steps hand on DataFrames
            make_pipeline(
                _columns(
                    ("plan", OneHotEncoder(sparse_output=False), ["plan", "region"]),
                    ("numbers", StandardScaler(), NUMBERS),
                ),
                LogisticRegression(max_iter=500),
            ).set_output(transform="pandas"),
        ),
        (
            "function-of-the-frame",  # a first step that may read the frame by column name
            make_pipeline(
                FunctionTransformer(lambda frame: frame[NUMBERS]),
                LogisticRegression(max_iter=500),
            ),
        ),
        (
            "subclassed-part",  # a subclass may transform otherwise than its parent
            make_pipeline(
                _columns(
                    ("plan", OneHotEncoder(), ["plan", "region"]),
                    ("numbers", ShiftedScaler(), NUMBERS),
                ),
                LogisticRegression(max_iter=500),
            ),
        ),
        (
            "weighted",
            make_pipeline(
                _columns(
                    ("plan", OneHotEncoder(), ["plan", "region"]),
                    ("numbers", StandardScaler(), NUMBERS),
                    transformer_weights={"numbers": 2.0},
                ),
                LogisticRegression(max_iter=500),
            ),
        ),
        (
            "encoder-of-two-dtypes",  # an OrdinalEncoder of a string and an integer column
            make_pipeline(
                _columns(
                    ("mixed", OrdinalEncoder(), ["plan", "calls"]),
                    ("numbers", StandardScaler(), ["age", "income"]),
                ),
                LogisticRegression(max_iter=500),
            ),
        ),
        (
            "passthrough",  # columns handed on as the frame's own
            make_pipeline(
                _columns(
                    ("plan", OneHotEncoder(), ["plan", "region"]),
                    ("numbers", StandardScaler(), ["income", "calls"]),
                    ("age", "passthrough", ["age"]),
                ),
                LogisticRegression(max_iter=500),
            ),
        ),
    ],
)
def test_pipelines_the_direct_call_cannot_prove_go_through_mlflow(
    tmp_path: Path, name: str, estimator: Any
) -> None:
    frame, labels = _customers()
    model = _load(tmp_path, name, estimator, frame, labels)
    assert model.spec.plan is not None
    assert model.direct is None
