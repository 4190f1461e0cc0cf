"""How the registry client names a failure, and the MLflow HTTP bounds it sets."""

import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

from gateway.serving.registry import (
    ERROR,
    NOT_FOUND,
    UNREACHABLE,
    RegistryError,
    _reason,
    bound_http_requests,
)


def test_a_missing_resource_is_not_found() -> None:
    assert _reason(MlflowException("no alias", error_code=RESOURCE_DOES_NOT_EXIST)) == NOT_FOUND


def test_a_refused_connection_behind_an_mlflow_error_is_unreachable() -> None:
    wrapped = MlflowException("API request failed with exception Connection refused")
    # MLflow raises inside its `except`, without `from`: the cause is the implicit context.
    wrapped.__context__ = requests.ConnectionError("Connection refused")
    assert _reason(wrapped) == UNREACHABLE


def test_any_other_mlflow_error_is_an_error() -> None:
    assert _reason(MlflowException("bad request")) == ERROR


def test_a_registry_error_defaults_to_the_error_reason() -> None:
    assert RegistryError("something").reason == ERROR


def test_http_bounds_are_set_only_where_the_user_set_none() -> None:
    environ = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5", "MLFLOW_HTTP_REQUEST_TIMEOUT": ""}
    chosen = bound_http_requests(7, environ)
    assert chosen == {"MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "7"}
    assert environ == {
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
    }
