"""The one error type a client can see, and the table that gives each error code its HTTP status."""

from collections.abc import Mapping
from typing import Final

# Modelled on MLflow's ERROR_CODE_TO_HTTP_STATUS so that clients written for `mlflow models serve`
# see the codes they know; those after DEADLINE_EXCEEDED have no MLflow equivalent and name what
# went wrong.
HTTP_STATUS: Final[dict[str, int]] = {
    "BAD_REQUEST": 400,
    "INVALID_PARAMETER_VALUE": 400,
    "MALFORMED_REQUEST": 400,
    "UNAUTHENTICATED": 401,
    "ENDPOINT_NOT_FOUND": 404,
    "RESOURCE_DOES_NOT_EXIST": 404,
    "REQUEST_LIMIT_EXCEEDED": 429,
    "INTERNAL_ERROR": 500,
    "NOT_IMPLEMENTED": 501,
    "TEMPORARILY_UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "METHOD_NOT_ALLOWED": 405,
    "REQUEST_TIMEOUT": 408,
    "PAYLOAD_TOO_LARGE": 413,
    "REQUEST_HEADER_FIELDS_TOO_LARGE": 431,
    "UNSUPPORTED_MEDIA_TYPE": 415,
    # nginx's code for a client that went away before its answer: only logs and metrics see it.
    "CLIENT_CLOSED_REQUEST": 499,
}


class GatewayError(Exception):
    """An error to answer with `{"error_code": ..., "message": ...}` and the code's HTTP status."""

    def __init__(
        self, error_code: str, message: str, classification: Mapping[str, str] | None = None
    ) -> None:
        if error_code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {error_code!r}")
        super().__init__(message)
        self.error_code = error_code
        self.message = message
        # MLflow's `sqlstate` and `error_class`, passed on when an MLflow error is the cause.
        self.classification = dict(classification or {})

    @property
    def status_code(self) -> int:
        """The HTTP status for this error's code."""
        return HTTP_STATUS[self.error_code]

    def to_dict(self) -> dict[str, str]:
        """The MLflow-style error body."""
        return {"error_code": self.error_code, "message": self.message, **self.classification}


def internal_error() -> GatewayError:
    """What a client sees of a bug: a 500 that points at the gateway's log, never a trace."""
    return GatewayError("INTERNAL_ERROR", "Internal error; see the gateway log.")
