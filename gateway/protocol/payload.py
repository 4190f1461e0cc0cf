"""The MLflow scoring protocol: a request body to model input and params; predictions to JSON bytes.

Parsing and schema casting are MLflow's own functions (those of `mlflow models serve`), so the
gateway accepts and rejects exactly what MLflow does and answers the same bytes. What differs is
on purpose and listed in the README: errors never quote the payload and never carry a stack trace,
every client error is a 4xx with a JSON body, and media types are matched as RFC 9110 says.
"""

import json
import re
from dataclasses import dataclass
from enum import StrEnum
from io import BytesIO, StringIO
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from gateway.core.errors import GatewayError
from gateway.protocol import compat
from gateway.protocol.frame_plan import FramePlan, PlannedRows


class Format(StrEnum):
    """The body formats of the scoring protocol, by media type."""

    JSON = "application/json"
    CSV = "text/csv"
    PARQUET = "application/vnd.apache.parquet"


SUPPORTED_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs")
# Top-level fields Databricks clients send beside the input: the SDK's `serving_endpoints.query`
# (`client_request_id`, `usage_context`) and MLflow's Databricks deployments client
# (`databricks_options`). They are for the server, not the model: accepted with every input
# format, removed before parsing (so never a 400, never model input), and kept in the logged
# request body, from which the inference record reads `client_request_id`.
CLIENT_KEYS = frozenset({"client_request_id", "usage_context", "databricks_options"})


@dataclass(frozen=True)
class InputSpec:
    """What parsing needs of a model version: its MLflow metadata, input schema and frame plan."""

    metadata: Any
    input_schema: Any
    plan: FramePlan | None = None
    # Rows a request may have (`max_request_rows`): more get 413. None: no limit.
    max_rows: int | None = None


@dataclass(frozen=True)
class ModelInput:
    """What `predict` takes, parsed from one request.

    A request that the model's frame plan builds keeps its typed `rows` unbuilt, so that a batch
    can build the rows of many requests into one frame; `frame()` builds them for one.
    """

    data: Any
    params: dict[str, Any] | None
    # The unified LLM format answers the bare predictions, without the `predictions` envelope.
    unwrapped: bool = False
    # The plan that built (or builds) the frame: it is then exactly what MLflow's schema
    # enforcement makes of the request for a model with that plan.
    plan: FramePlan | None = None
    rows: PlannedRows | None = None

    def frame(self) -> Any:
        """The model's input: the data, or the planned rows built into a frame."""
        if self.rows is not None and self.plan is not None:
            return self.plan.build([self.rows])
        return self.data

    @property
    def row_count(self) -> int:
        """Rows in the input (1 for something without a length)."""
        if self.rows is not None:
            return self.rows.length
        try:
            return len(self.data)
        except TypeError:
            return 1


def parse(spec: InputSpec, body_format: "Format", body: bytes) -> ModelInput:
    """The one way a request body becomes model input, whatever path it takes (single, batch, shadow)."""
    if body_format is Format.JSON:
        document = decode_json(body)
        # Counted before anything is built from them: a refused request costs its JSON only.
        _check_rows(_json_rows(document), spec.max_rows)
        parsed = parse_json(document, spec.metadata, spec.input_schema, spec.plan)
    elif body_format is Format.CSV:
        parsed = parse_csv(body, spec.input_schema)
    else:
        parsed = parse_parquet(body)
    _check_rows(parsed.row_count, spec.max_rows)
    return parsed


def _json_rows(document: dict[str, Any]) -> int:
    """The rows of a JSON request's input as sent (0 when its shape is not a list of rows)."""
    data = document.get("dataframe_split")
    if isinstance(data, dict):
        data = data.get("data")
    else:
        data = next((document[key] for key in SUPPORTED_KEYS[1:] if key in document), None)
    return len(data) if isinstance(data, list) else 0


def _check_rows(rows: int, limit: int | None) -> None:
    if limit is not None and rows > limit:
        raise GatewayError(
            "PAYLOAD_TOO_LARGE", f"The request has {rows} rows; at most {limit} are accepted."
        )


_SUPPORTED = ", ".join(f"'{fmt.value}'" for fmt in Format)
# Content-Type values already accepted: clients send the same few, and parsing one costs ~2 us.
# Bounded, so that a client sending a new value each time fills it once and no more.
_ACCEPTED: dict[str, Format] = {}
_ACCEPTED_MAX = 64


def parse_media_type(content_type: str | None) -> Format:
    """The request's format; 415 for a missing or unsupported type or a charset other than UTF-8."""
    if content_type is None:
        return _parse_media_type(content_type)
    known = _ACCEPTED.get(content_type)
    if known is None:
        known = _parse_media_type(content_type)
        if len(_ACCEPTED) < _ACCEPTED_MAX:
            _ACCEPTED[content_type] = known
    return known


def _parse_media_type(content_type: str | None) -> Format:
    if content_type is None or not content_type.strip():
        raise GatewayError(
            "UNSUPPORTED_MEDIA_TYPE", f"A Content-Type header is required; supported: {_SUPPORTED}."
        )
    mime, *pairs = (part.strip() for part in content_type.split(";"))
    params = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        params[key.strip().lower()] = value.strip().strip('"')
    if params.get("charset", "utf-8").lower() != "utf-8":
        raise GatewayError("UNSUPPORTED_MEDIA_TYPE", "The scoring server only supports UTF-8")
    unexpected = sorted(set(params) - {"charset"})
    if unexpected:
        raise GatewayError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"Unrecognized content type parameters: {', '.join(unexpected)}. "
            "Only `charset=utf-8` is accepted.",
        )
    try:
        return Format(mime.lower())
    except ValueError:
        raise GatewayError(
            "UNSUPPORTED_MEDIA_TYPE",
            f"This predictor only supports the following content types: {_SUPPORTED}.",
        ) from None


def decode_json(body: bytes) -> dict[str, Any]:
    """The JSON document of a request; 400 unless it is a JSON object."""
    try:
        document = json.loads(body)
    except UnicodeDecodeError as exc:
        # str(), not repr(): the repr of a UnicodeDecodeError carries the whole body.
        raise GatewayError(
            "BAD_REQUEST",
            f"Invalid input. Ensure that input is a valid UTF-8 encoded string. Error: '{exc}'",
        ) from exc
    except ValueError as exc:
        raise GatewayError(
            "BAD_REQUEST",
            f"Invalid input. Ensure that input is a valid JSON formatted string. Error: '{exc!r}'",
        ) from exc
    except RecursionError as exc:
        raise GatewayError("BAD_REQUEST", "The JSON document is nested too deeply.") from exc
    if isinstance(document, dict):
        return document
    received = (
        "a list"
        if isinstance(document, list)
        else f"unexpected input type '{type(document).__name__}'"
    )
    raise GatewayError("BAD_REQUEST", f"Invalid input. {_required_format()}. Received {received}.")


def parse_json(
    document: dict[str, Any], metadata: Any, input_schema: Any, plan: FramePlan | None = None
) -> ModelInput:
    """Model input from a decoded JSON request, with MLflow's parsing and schema casting.

    With a plan, a request it can build exactly keeps its typed rows; any other goes through MLflow.
    The `CLIENT_KEYS` are removed first, on both ways.
    """
    document = without_client_keys(document)
    rows = planned_rows(document, plan)
    if rows is not None:
        return ModelInput(None, document.get("params"), plan=plan, rows=rows)
    try:
        parsed = compat.parse_json_document(dict(document), metadata, input_schema)
    except MlflowException as exc:
        raise as_gateway_error(exc) from exc
    except (ValueError, TypeError, KeyError) as exc:
        raise GatewayError("BAD_REQUEST", f"Invalid input. {_scrub(str(exc))}") from exc
    return ModelInput(parsed.data, parsed.params, parsed.is_unified_llm_input)


def without_client_keys(document: dict[str, Any]) -> dict[str, Any]:
    """The document without the `CLIENT_KEYS`: the same object, uncopied, when it has none."""
    if CLIENT_KEYS.isdisjoint(document):
        return document
    return {key: value for key, value in document.items() if key not in CLIENT_KEYS}


def planned_rows(document: dict[str, Any], plan: FramePlan | None) -> PlannedRows | None:
    """The request's rows as the plan builds them; None: MLflow parses it. 400 for a bad shape."""
    if compat.is_unified_llm_input(document):
        return None
    found = [key for key in document if key in SUPPORTED_KEYS]
    if len(found) != 1:
        keys = ", ".join(repr(key) for key in document) or "none"
        raise GatewayError(
            "BAD_REQUEST", f"{_required_format()}. Received dictionary with keys: {keys}."
        )
    if "params" in document and not isinstance(document["params"], dict | None):
        raise GatewayError("BAD_REQUEST", "`params` must be a JSON object.")
    return None if plan is None else plan.rows(document)


def parse_csv(body: bytes, input_schema: Any) -> ModelInput:
    """Model input from a CSV body, typed by the signature as MLflow does."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GatewayError(
            "BAD_REQUEST",
            f"Invalid input. Ensure that input is a valid UTF-8 encoded string. Error: '{exc}'",
        ) from exc
    try:
        return ModelInput(compat.parse_csv(StringIO(text), input_schema), None)
    except MlflowException as exc:
        raise as_gateway_error(exc) from exc


def parse_parquet(body: bytes) -> ModelInput:
    """Model input from a Parquet body."""
    try:
        return ModelInput(compat.parse_parquet(BytesIO(body)), None)
    except MlflowException as exc:
        raise as_gateway_error(exc) from exc


def encode_predictions(raw: Any, unwrapped: bool = False) -> bytes:
    """The response body, byte-for-byte what `mlflow models serve` writes for these predictions."""
    return compat.encode_predictions(raw, unwrapped)


def per_row(raw: Any, rows: int) -> list[Any]:
    """Predictions as one JSON-ready item a row, as MLflow would write them; 400 if they are not."""
    items = compat.jsonable(raw)
    if not isinstance(items, list) or len(items) != rows:
        raise GatewayError(
            "BAD_REQUEST",
            "The model's output cannot be split by row, so this endpoint cannot route rows "
            "separately; use a sticky header instead.",
        )
    return items


def as_gateway_error(exc: MlflowException) -> GatewayError:
    """An MLflow error as a client sees it: the same code and message, minus payload and trace."""
    code = exc.error_code if isinstance(exc.error_code, str) else "BAD_REQUEST"
    classification = {
        key: value
        for key in ("sqlstate", "error_class")
        if isinstance(value := getattr(exc, key, None), str)
    }
    try:
        return GatewayError(code, _scrub(exc.message), classification)
    except ValueError:
        return GatewayError("BAD_REQUEST", _scrub(exc.message), classification)


def predict_error(exc: Exception) -> GatewayError:
    """The client's view of a failed `predict`, as MLflow's scoring server classifies it."""
    if isinstance(exc, MlflowException):
        error = as_gateway_error(exc)
        return GatewayError(
            error.error_code,
            f"Failed to predict data. Error: {error.message}",
            error.classification,
        )
    return as_gateway_error(
        MlflowException(
            "Encountered an unexpected error while evaluating the model. Verify that the "
            "serialized input Dataframe is compatible with the model for inference.",
            error_code=BAD_REQUEST,
        )
    )


_QUOTED_DATA = re.compile(r"Failed to enforce schema of data '.*?' with schema '", re.DOTALL)
_CONVERSION_DETAIL = re.compile(
    r"(Failed to convert column .+? to type '[^']+'\.) Error: .*", re.DOTALL
)
_FORMAT_SET = re.compile(r"\{'[a-z_]+'(?:, '[a-z_]+')*\}")


# Every quoted stretch, overlapping ones too: an apostrophe (`model's`) must not hide a quote.
_QUOTED = re.compile(r"(?=(?:'([^'\n]+)'|\"([^\"\n]+)\"|`([^`\n]+)`))")


def without_echo(error: GatewayError, body: bytes) -> GatewayError:
    """The error without any quoted fragment of the request body in its message.

    MLflow, pandas and the models quote what they could not read (`could not convert string to
    float: 'alice@example.com'`); a client error must never echo request data, so a quoted
    fragment that the body holds as a whole value (a JSON string, a CSV cell, or raw bytes of a
    binary body) becomes `'...'`. Column names the request lacks are not in the body: they stay.
    """
    if not body or not any(quote in error.message for quote in "'\"`"):
        return error
    try:
        text, binary = body.decode("utf-8"), False
    except UnicodeDecodeError:
        text, binary = body.decode("utf-8", "replace"), True
    echoed = {
        fragment
        for match in _QUOTED.finditer(error.message)
        if (fragment := match.group(1) or match.group(2) or match.group(3))
        and _in_body(fragment, text, body if binary else None)
    }
    if not echoed:
        return error
    message = error.message
    for fragment in sorted(echoed, key=len, reverse=True):
        for quote in "'\"`":
            message = message.replace(f"{quote}{fragment}{quote}", f"{quote}...{quote}")
    return GatewayError(error.error_code, message, error.classification)


_MANGLED = re.compile(r"\.\d+$")  # pandas renames a repeated column `x` to `x.1`


def _in_body(fragment: str, text: str, binary: bytes | None) -> bool:
    """Whether the body holds the fragment whole: a JSON string, a CSV cell, or raw bytes.

    Whole values only: the word `split` of a message is not an echo of `dataframe_split`.
    """
    for candidate in {fragment, _MANGLED.sub("", fragment)}:
        if not candidate:
            continue
        cell = re.compile(rf"(?:^|[,\r\n]){re.escape(candidate)}(?:$|[,\r\n])", re.MULTILINE)
        if json.dumps(candidate) in text or cell.search(text):
            return True
        if binary is not None and candidate.encode() in binary:
            return True
    return False


def _scrub(message: str) -> str:
    """Remove request data that MLflow quotes in its messages, and make set orders stable."""
    message = _QUOTED_DATA.sub("Failed to enforce the model's schema '", message)
    message = _CONVERSION_DETAIL.sub(r"\1", message)
    message = _FORMAT_SET.sub(", ".join(SUPPORTED_KEYS), message)
    return message.strip()


def _required_format() -> str:
    return f"The input must be a JSON dictionary with exactly one of the input fields {', '.join(SUPPORTED_KEYS)}"
