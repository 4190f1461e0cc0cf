"""The error table and the error body clients see."""

import pytest

from gateway.core.errors import HTTP_STATUS, GatewayError


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("BAD_REQUEST", 400),
        ("INVALID_PARAMETER_VALUE", 400),
        ("ENDPOINT_NOT_FOUND", 404),
        ("METHOD_NOT_ALLOWED", 405),
        ("PAYLOAD_TOO_LARGE", 413),
        ("UNSUPPORTED_MEDIA_TYPE", 415),
        ("TEMPORARILY_UNAVAILABLE", 503),
        ("INTERNAL_ERROR", 500),
    ],
)
def test_each_code_has_its_status(code: str, status: int) -> None:
    assert GatewayError(code, "m").status_code == status == HTTP_STATUS[code]


def test_body_is_code_message_and_mlflow_classification() -> None:
    error = GatewayError("BAD_REQUEST", "bad", {"sqlstate": "KAM00"})
    assert error.to_dict() == {"error_code": "BAD_REQUEST", "message": "bad", "sqlstate": "KAM00"}


def test_unknown_codes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown error code"):
        GatewayError("NOPE", "m")
