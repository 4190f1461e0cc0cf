"""One test per private MLflow, pandas or scikit-learn hook in gateway.protocol.compat: a release that
moves one fails here."""

from io import BytesIO, StringIO
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.pyfunc import PyFuncModel
from mlflow.types import ColSpec, Schema

from gateway.protocol import compat

SCHEMA = Schema([ColSpec("long", "age"), ColSpec("double", "income")])


class _Echo:
    """A model implementation that returns what it is given."""

    def predict(self, data: Any, params: dict[str, Any] | None = None) -> Any:
        return data


def _metadata() -> Model:
    return Model(signature=ModelSignature(inputs=SCHEMA))


def test_parse_json_document_returns_data_params_and_the_llm_flag() -> None:
    document = {"dataframe_split": {"columns": ["age", "income"], "data": [[3, 1.5]]}}
    parsed = compat.parse_json_document(document, _metadata(), SCHEMA)
    assert list(parsed.data.columns) == ["age", "income"]
    assert parsed.params is None
    assert parsed.is_unified_llm_input is False


def test_parse_csv_types_columns_by_the_schema() -> None:
    frame = compat.parse_csv(StringIO("age,income\n3,1.5\n"), SCHEMA)
    assert frame.to_dict("records") == [{"age": 3, "income": 1.5}]


def test_parse_parquet_reads_a_frame() -> None:
    buffer = BytesIO()
    pd.DataFrame({"age": [3]}).to_parquet(buffer)
    buffer.seek(0)
    assert compat.parse_parquet(buffer).to_dict("records") == [{"age": 3}]


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, True),
        ({"inputs": [1, 2]}, False),
    ],
)
def test_is_unified_llm_input_tells_chat_requests(document: dict[str, Any], expected: bool) -> None:
    assert compat.is_unified_llm_input(document) is expected


def test_encode_predictions_writes_the_scoring_servers_envelope() -> None:
    assert (
        compat.encode_predictions(np.array([0, 1]), unwrapped=False) == b'{"predictions": [0, 1]}'
    )
    assert compat.encode_predictions({"a": 1}, unwrapped=True) == b'{"a": 1}'


def test_jsonable_turns_a_frame_into_records() -> None:
    assert compat.jsonable(pd.DataFrame({"p": [0.5, 0.25]})) == [{"p": 0.5}, {"p": 0.25}]


def test_enforce_schema_casts_to_the_signatures_types_and_rejects_what_it_cannot() -> None:
    enforced = compat.enforce_schema(pd.DataFrame({"income": [1], "age": [3]}), SCHEMA)
    assert list(enforced.columns) == ["age", "income"]
    assert str(enforced["income"].dtype) == "float64"
    with pytest.raises(MlflowException):
        compat.enforce_schema(pd.DataFrame({"age": [3]}), SCHEMA)


def test_signature_from_type_hints_reads_the_metadata_hooks() -> None:
    assert hasattr(Model, "_is_signature_from_type_hint")
    assert hasattr(Model, "_is_type_hint_from_example")
    assert compat.signature_from_type_hints(_metadata()) is False


def test_without_input_enforcement_skips_only_the_input_schema() -> None:
    model = PyFuncModel(model_meta=_metadata(), model_impl=_Echo())
    wrong = pd.DataFrame({"other": ["x"]})
    with pytest.raises(MlflowException):
        model.predict(wrong)
    planned = compat.without_input_enforcement(model)
    assert planned.predict(wrong).equals(wrong)
    assert model.metadata.signature.inputs == SCHEMA  # the original keeps its schema


def test_frame_from_arrays_builds_a_frame_without_copying_checks() -> None:
    frame = compat.frame_from_arrays(
        [np.array([1, 2]), np.array([0.5, 1.5])], pd.Index(["age", "income"]), 2
    )
    assert frame.to_dict("records") == [{"age": 1, "income": 0.5}, {"age": 2, "income": 1.5}]
    assert isinstance(frame.index, pd.RangeIndex)


def test_concat_extension_arrays_joins_string_arrays() -> None:
    parts = [pd.array(["a"], dtype="string"), pd.array(["b", "c"], dtype="string")]
    assert list(compat.concat_extension_arrays(parts)) == ["a", "b", "c"]


@pytest.mark.parametrize("predict_fn", ["predict", "predict_proba"])
def test_sklearn_predict_method_finds_the_estimator_and_its_method(
    tmp_path: Path, predict_fn: str
) -> None:
    from sklearn.linear_model import LinearRegression, LogisticRegression

    frame = pd.DataFrame({"age": [1.0, 2.0, 3.0, 4.0]})
    estimator = (LogisticRegression() if predict_fn == "predict_proba" else LinearRegression()).fit(
        frame, [0, 1, 0, 1]
    )
    mlflow.sklearn.save_model(
        estimator,
        tmp_path / "model",
        pyfunc_predict_fn=predict_fn,
        serialization_format="cloudpickle",
        pip_requirements=[],
    )
    found = compat.sklearn_predict_method(mlflow.pyfunc.load_model(str(tmp_path / "model")))
    assert found is not None
    assert type(found[0]) is type(estimator)
    assert found[1] == predict_fn


def test_sklearn_predict_method_is_none_for_other_models() -> None:
    pyfunc = PyFuncModel(model_meta=_metadata(), model_impl=_Echo())
    assert compat.sklearn_predict_method(pyfunc) is None


def test_sklearn_forest_in_turn_averages_the_trees_as_the_forest_does() -> None:
    from sklearn.ensemble import (
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    rows = rng.normal(size=(200, 4))
    labels = (rows[:, 0] + rows[:, 1] > 0).astype(int)
    targets = np.stack([rows[:, 0] * 2, rows[:, 2]], axis=1)
    fitted = [
        (RandomForestClassifier(n_estimators=9, random_state=0).fit(rows, labels), "predict_proba"),
        (RandomForestRegressor(n_estimators=9, random_state=0).fit(rows, targets[:, 0]), "predict"),
        (ExtraTreesRegressor(n_estimators=9, random_state=0).fit(rows, targets), "predict"),
    ]
    for forest, method in fitted:
        found = compat.sklearn_forest_in_turn(forest)
        assert found is not None
        assert found[0] == method
        sample = rng.normal(size=(17, 4))
        np.testing.assert_array_equal(found[1](sample), getattr(forest, method)(sample))

    threaded = RandomForestClassifier(n_estimators=3, n_jobs=2).fit(rows, labels)
    assert compat.sklearn_forest_in_turn(threaded) is None
    assert compat.sklearn_forest_in_turn(LogisticRegression().fit(rows, labels)) is None

    class Tempered(RandomForestClassifier):  # type: ignore[misc]
        def predict_proba(self, X: Any) -> Any:  # noqa: N803 (scikit-learn's name)
            return super().predict_proba(X) ** 2

    assert compat.sklearn_forest_in_turn(Tempered(n_estimators=3).fit(rows, labels)) is None


def test_sklearn_column_indices_are_where_each_transformer_reads_its_columns() -> None:
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame = pd.DataFrame({"a": [1.0, 2.0], "kind": ["x", "y"], "b": [3.0, 4.0], "c": [0, 1]})
    transformer = ColumnTransformer(
        [("numbers", StandardScaler(), ["b", "a"]), ("kind", OneHotEncoder(), ["kind"])]
    ).fit(frame)
    assert compat.sklearn_column_indices(transformer) == {
        "numbers": [2, 0],
        "kind": [1],
        "remainder": [3],
    }
    assert compat.sklearn_column_indices(StandardScaler()) is None


def test_sklearn_transform_output_follows_set_output_and_the_global_setting() -> None:
    import sklearn
    from sklearn.preprocessing import StandardScaler

    assert compat.sklearn_transform_output(StandardScaler()) == "default"
    assert compat.sklearn_transform_output(StandardScaler().set_output(transform="pandas")) == (
        "pandas"
    )
    with sklearn.config_context(transform_output="pandas"):
        assert compat.sklearn_transform_output(StandardScaler()) == "pandas"
