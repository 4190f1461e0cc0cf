"""The scoring protocol's parsing and encoding, with an in-memory model signature."""

from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.types import ColSpec, Schema

from gateway.core.errors import GatewayError
from gateway.protocol import compat, payload
from gateway.protocol.frame_plan import make_plan

SCHEMA = Schema([ColSpec("long", "age"), ColSpec("double", "income"), ColSpec("string", "plan")])
METADATA = Model(signature=ModelSignature(inputs=SCHEMA))


def error_of(call: object, *args: object) -> GatewayError:
    assert callable(call)
    with pytest.raises(GatewayError) as caught:
        call(*args)
    return caught.value


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("application/json", payload.Format.JSON),
        ("application/json; charset=utf-8", payload.Format.JSON),
        ("application/json;charset=UTF-8", payload.Format.JSON),
        ('application/json; charset="utf-8"', payload.Format.JSON),
        ("Application/JSON", payload.Format.JSON),
        ("text/csv", payload.Format.CSV),
        ("text/csv; charset=utf-8", payload.Format.CSV),
        ("application/vnd.apache.parquet", payload.Format.PARQUET),
    ],
)
def test_supported_media_types_are_recognised(content_type: str, expected: payload.Format) -> None:
    assert payload.parse_media_type(content_type) is expected


@pytest.mark.parametrize(
    ("content_type", "message"),
    [
        (None, "A Content-Type header is required"),
        ("", "A Content-Type header is required"),
        ("text/plain", "only supports the following content types"),
        ("application/json; charset=latin-1", "only supports UTF-8"),
        ("application/json; format=pandas-split", "Unrecognized content type parameters: format"),
    ],
)
def test_unsupported_media_types_are_415(content_type: str | None, message: str) -> None:
    error = error_of(payload.parse_media_type, content_type)
    assert (error.status_code, error.error_code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert message in error.message


def test_media_types_are_judged_the_same_every_time_whatever_the_clients_send() -> None:
    for _ in range(3):
        assert payload.parse_media_type("text/csv; charset=utf-8") is payload.Format.CSV
        assert error_of(payload.parse_media_type, "text/plain").status_code == 415
    # Many distinct accepted values (here: spacing): each still parsed right, memory bounded.
    for spaces in range(200):
        content_type = "application/json;" + " " * spaces + "charset=utf-8"
        assert payload.parse_media_type(content_type) is payload.Format.JSON
    assert error_of(payload.parse_media_type, "application/json; charset=latin-1")
    assert len(payload._ACCEPTED) <= payload._ACCEPTED_MAX


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "valid JSON formatted string"),
        (b"{", "valid JSON formatted string"),
        (b"[1, 2]", "Received a list"),
        (b"42", "Received unexpected input type 'int'"),
        (b'{"a": "\xff"}', "valid UTF-8 encoded string"),
        (b"[" * 200_000 + b"]" * 200_000, ""),
    ],
)
def test_bad_json_is_a_400_that_does_not_quote_the_body(body: bytes, message: str) -> None:
    error = error_of(payload.decode_json, body)
    assert (error.status_code, error.error_code) == (400, "BAD_REQUEST")
    assert message in error.message
    assert "\\xff" not in error.message
    assert "[[[" not in error.message


def test_json_formats_give_the_same_frame() -> None:
    rows = [[30, 1000.5, "pro"], [40, 2000.0, "basic"]]
    documents: list[dict[str, Any]] = [
        {"dataframe_split": {"columns": ["age", "income", "plan"], "data": rows}},
        {
            "dataframe_records": [
                {"age": 30, "income": 1000.5, "plan": "pro"},
                {"age": 40, "income": 2000.0, "plan": "basic"},
            ]
        },
        {"inputs": {"age": [30, 40], "income": [1000.5, 2000.0], "plan": ["pro", "basic"]}},
    ]
    frames = [payload.parse_json(document, METADATA, SCHEMA).data for document in documents]
    for frame in frames[:2]:
        assert isinstance(frame, pd.DataFrame)
        assert frame["age"].dtype == np.int64
        assert list(frame["plan"]) == ["pro", "basic"]


def test_params_are_passed_through() -> None:
    document = {"dataframe_records": [{"age": 1, "income": 1.0, "plan": "pro"}], "params": {"k": 3}}
    assert payload.parse_json(document, METADATA, SCHEMA).params == {"k": 3}


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "Received dictionary with keys: none"),
        ({"data": []}, "Received dictionary with keys: 'data'"),
        ({"inputs": [], "instances": []}, "keys: 'inputs', 'instances'"),
        ({"inputs": [[1, 1.0, "a"]], "params": [1]}, "`params` must be a JSON object"),
    ],
)
def test_wrong_keys_are_a_400_naming_the_accepted_ones(
    document: dict[str, object], message: str
) -> None:
    error = error_of(payload.parse_json, document, METADATA, SCHEMA)
    assert error.status_code == 400
    assert message in error.message
    assert (
        "dataframe_split, dataframe_records, instances, inputs" in error.message
        or "params" in message
    )


def test_a_cast_failure_names_the_column_but_not_the_value() -> None:
    document = {"dataframe_records": [{"age": "secret-value", "income": 1.0, "plan": "pro"}]}
    error = error_of(payload.parse_json, document, METADATA, SCHEMA)
    assert "Failed to convert column age to type 'int64'" in error.message
    assert "secret-value" not in error.message
    assert error.classification == {"sqlstate": "KAM00", "error_class": "INVALID_PARAMETER_VALUE"}


def test_csv_is_typed_by_the_signature() -> None:
    frame = payload.parse_csv(b"age,income,plan\n30,1.5,pro\n", SCHEMA).data
    assert frame["age"].dtype == np.int64
    assert frame["income"].dtype == np.float64


def test_parquet_round_trips() -> None:
    frame = pd.DataFrame({"age": [1, 2], "income": [1.0, 2.0], "plan": ["a", "b"]})
    parsed = payload.parse_parquet(frame.to_parquet()).data
    pd.testing.assert_frame_equal(parsed, frame)


def test_garbage_parquet_is_a_400() -> None:
    assert error_of(payload.parse_parquet, b"not parquet").status_code == 400


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (np.array([0, 1, 1]), b'{"predictions": [0, 1, 1]}'),
        (np.array([[0.25, 0.75]]), b'{"predictions": [[0.25, 0.75]]}'),
        (pd.DataFrame({"a": [1, 2]}), b'{"predictions": [{"a": 1}, {"a": 2}]}'),
        # MLflow writes a Series as records of its one column, named "0".
        (pd.Series([1.5]), b'{"predictions": [{"0": 1.5}]}'),
        ([1, "x"], b'{"predictions": [1, "x"]}'),
    ],
)
def test_predictions_encode_as_mlflow_does(raw: object, expected: bytes) -> None:
    assert payload.encode_predictions(raw) == expected


def test_a_schema_error_in_predict_drops_the_quoted_data() -> None:
    exc = MlflowException.invalid_parameter_value(
        "Failed to enforce schema of data '   age\n0  41' with schema '['age': long]'. Error: Model is missing inputs ['plan']."
    )
    error = payload.predict_error(exc)
    assert error.error_code == "INVALID_PARAMETER_VALUE"
    assert error.message == (
        "Failed to predict data. Error: Failed to enforce the model's schema '['age': long]'. "
        "Error: Model is missing inputs ['plan']."
    )


def test_any_other_predict_failure_is_a_generic_400() -> None:
    error = payload.predict_error(ZeroDivisionError("model bug with data 123"))
    assert (error.status_code, error.error_code) == (400, "BAD_REQUEST")
    assert "123" not in error.message


# What Databricks clients send beside the input: the SDK's `serving_endpoints.query` sends the
# first two, MLflow's Databricks deployments client the third.
CLIENT_FIELDS: dict[str, object] = {
    "client_request_id": "abc-1",
    "usage_context": {"team": "growth"},
    "databricks_options": {"return_trace": True},
}
INPUT_OF_FORMAT: dict[str, dict[str, object]] = {
    "dataframe_split": {
        "dataframe_split": {"columns": ["age", "income", "plan"], "data": [[30, 1000.5, "pro"]]}
    },
    "dataframe_records": {"dataframe_records": [{"age": 30, "income": 1000.5, "plan": "pro"}]},
    "instances": {"instances": [{"age": 30, "income": 1000.5, "plan": "pro"}]},
    "inputs": {"inputs": {"age": [30], "income": [1000.5], "plan": ["pro"]}},
}
PLAN = make_plan(
    METADATA,
    SCHEMA,
    lambda document: compat.enforce_schema(
        payload.parse_json(document, METADATA, SCHEMA).data, SCHEMA
    ),
)


def test_the_client_keys_are_the_documented_three() -> None:
    assert frozenset(CLIENT_FIELDS) == payload.CLIENT_KEYS


@pytest.fixture
def mlflow_saw(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, object]]:
    """Every document handed to MLflow's parser."""
    seen: list[dict[str, object]] = []
    parse = compat.parse_json_document

    def spy(document: dict[str, object], metadata: object, input_schema: object) -> object:
        seen.append(dict(document))
        return parse(document, metadata, input_schema)

    monkeypatch.setattr(compat, "parse_json_document", spy)
    return seen


@pytest.mark.parametrize("planned", [False, True], ids=["mlflow", "plan"])
@pytest.mark.parametrize("input_format", list(INPUT_OF_FORMAT))
def test_client_fields_are_stripped_before_parsing_on_every_format_and_path(
    input_format: str, planned: bool, mlflow_saw: list[dict[str, object]]
) -> None:
    plan = PLAN if planned else None
    plain = INPUT_OF_FORMAT[input_format]
    document = {**CLIENT_FIELDS, **plain}
    parsed = payload.parse_json(document, METADATA, SCHEMA, plan)
    expected = payload.parse_json(plain, METADATA, SCHEMA, plan)
    # The fast path takes the dataframe formats with or without the fields; MLflow the others.
    fast = planned and input_format.startswith("dataframe_")
    assert (parsed.rows is not None, expected.rows is not None) == (fast, fast)
    assert all(set(seen) == {input_format} for seen in mlflow_saw)
    assert len(mlflow_saw) == (0 if fast else 2)
    pd.testing.assert_frame_equal(
        compat.enforce_schema(parsed.frame(), SCHEMA),
        compat.enforce_schema(expected.frame(), SCHEMA),
    )
    assert parsed.params is None
    # The caller's document, and so the logged body, keeps them.
    assert document == {**CLIENT_FIELDS, **plain}


@pytest.mark.parametrize("key", sorted(payload.CLIENT_KEYS))
def test_each_client_field_alone_is_accepted_beside_params(key: str) -> None:
    document = {key: CLIENT_FIELDS[key], **INPUT_OF_FORMAT["dataframe_records"], "params": {"k": 3}}
    for plan in (None, PLAN):
        assert payload.parse_json(document, METADATA, SCHEMA, plan).params == {"k": 3}


def test_client_fields_alone_are_still_a_400_without_an_input() -> None:
    error = error_of(payload.parse_json, dict(CLIENT_FIELDS), METADATA, SCHEMA)
    assert error.status_code == 400
    assert "Received dictionary with keys: none" in error.message


def test_client_fields_never_reach_a_unified_llm_model() -> None:
    messages = [{"role": "user", "content": "hi"}]
    document = {"messages": messages, "temperature": 0.1, **CLIENT_FIELDS}
    parsed = payload.parse_json(document, Model(), None)
    assert parsed.unwrapped
    assert parsed.data == {"messages": messages, "temperature": 0.1}


def test_a_document_without_client_fields_is_not_copied() -> None:
    document = INPUT_OF_FORMAT["dataframe_split"]
    assert payload.without_client_keys(document) is document
    stripped = payload.without_client_keys({**document, "usage_context": {}})
    assert stripped == document


@pytest.mark.parametrize(
    ("message", "body", "expected"),
    [
        (
            "could not convert string to float: 'alice@example.com'",
            b"age,income\nalice@example.com,2\n",
            "could not convert string to float: '...'",
        ),
        (
            "Failed to enforce the model's schema '[x]'. Note that there were extra inputs: "
            "['secret_col']",
            b'{"dataframe_split": {"columns": ["secret_col"], "data": []}}',
            "Failed to enforce the model's schema '[x]'. Note that there were extra inputs: "
            "['...']",
        ),
        (
            "Model is missing inputs ['age'].",
            b'{"dataframe_records": [{"other": 1}]}',
            "Model is missing inputs ['age'].",
        ),
        (
            'Unable to parse string "caf\u00e9" at position 0',
            b'{"inputs": ["caf\\u00e9"]}',
            'Unable to parse string "..." at position 0',
        ),
        ("Invalid input 'a'.", b"a", "Invalid input '...'."),
        (
            "not a valid dataframe representation in 'split' format.",
            b'{"dataframe_split": {"columns": ["a"], "data": [[1, 2]]}}',
            "not a valid dataframe representation in 'split' format.",
        ),
        ("Bad value 'secret'", b"PAR1\x00\xff\x15secret\x00", "Bad value '...'"),
        ("Nothing quoted here.", b"anything", "Nothing quoted here."),
    ],
)
def test_error_messages_never_echo_a_quoted_fragment_of_the_request(
    message: str, body: bytes, expected: str
) -> None:
    cleaned = payload.without_echo(GatewayError("BAD_REQUEST", message, {"sqlstate": "X"}), body)
    assert cleaned.message == expected
    assert cleaned.classification == {"sqlstate": "X"}
