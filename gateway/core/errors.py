"""The one error type a client can see, and the table that gives each error code its HTTP status."""

from collections.abc import Mapping
from typing import Final, Literal

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


# Why a request was shed: too many in flight on its worker, or it waited too long for its predict.
ShedReason = Literal["in_flight", "queue_time", "body_bytes"]


class ShedError(GatewayError):
    """A request refused because its worker is overloaded: a 503 that says when to retry."""

    def __init__(self, reason: ShedReason, message: str, retry_after: int = 1) -> None:
        super().__init__("TEMPORARILY_UNAVAILABLE", message)
        self.reason: ShedReason = reason
        self.retry_after = retry_after  # seconds, for the `Retry-After` header


def too_many_in_flight(limit: int, *, lowered: bool = False) -> ShedError:
    """The refusal of a request that finds `limit` others in flight on its worker; `lowered`:
    a limit below `max_in_flight`, while the worker is overloaded."""
    setting = "max_in_flight, lowered while its queue sheds" if lowered else "max_in_flight"
    return ShedError(
        "in_flight",
        f"The gateway is overloaded: this worker is answering {limit} requests already "
        f"({setting}). Retry later.",
    )


def too_many_body_bytes(limit: int) -> ShedError:
    """The refusal of a request whose body would take its worker past `limit` bytes of bodies."""
    return ShedError(
        "body_bytes",
        f"The gateway is overloaded: this worker holds request bodies of {limit} bytes at most "
        "at once (max_in_flight_bytes). Retry later.",
    )


def waited_too_long(limit_seconds: float, setting: str = "max_queue_ms") -> ShedError:
    """The refusal of a request that waited longer than `limit_seconds` for its predict, the
    limit that `setting` made."""
    return ShedError(
        "queue_time",
        f"The gateway is overloaded: the request waited more than "
        f"{round(limit_seconds * 1000, 1):g} ms for its prediction to start ({setting}). "
        "Retry later.",
    )


def internal_error() -> GatewayError:
    """What a client sees of a bug: a 500 that points at the gateway's log, never a trace."""
    return GatewayError("INTERNAL_ERROR", "Internal error; see the gateway log.")
