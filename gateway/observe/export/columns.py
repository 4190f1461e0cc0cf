"""The columns of an exported inference log: a JSON line read into typed values, then Arrow rows.

Two layouts: `parquet`, the log's own fields with Arrow types, and `databricks`, the columns of a
Databricks inference table. A line that is not a record of either schema version raises
`ValueError`; the caller counts it as malformed.
"""

import json
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, Final, NamedTuple

import pyarrow as pa

PARQUET: Final = "parquet"
DATABRICKS: Final = "databricks"
FORMATS: Final = (PARQUET, DATABRICKS)

_EPOCH: Final = date(1970, 1, 1)
_DAY_MS: Final = 86_400_000
_INT32: Final = range(-(2**31), 2**31)


def _required(name: str, kind: pa.DataType) -> pa.Field:
    return pa.field(name, kind, nullable=False)


LOG_SCHEMA: Final = pa.schema(
    [
        _required("schema_version", pa.int32()),
        _required("request_id", pa.string()),
        pa.field("client_request_id", pa.string()),
        _required("timestamp", pa.timestamp("ms", tz="UTC")),
        _required("endpoint", pa.string()),
        _required("model", pa.string()),
        pa.field("variant", pa.string()),
        pa.field("model_version", pa.string()),
        pa.field("routing", pa.string()),
        pa.field("split", pa.map_(pa.string(), pa.int64())),
        pa.field("user_key_hash", pa.string()),
        pa.field("requester", pa.string()),
        _required("status_code", pa.int32()),
        _required("duration_ms", pa.float64()),
        _required("request", pa.string()),
        _required("request_encoding", pa.string()),
        pa.field("response", pa.string()),
        pa.field("error", pa.string()),
        _required("truncated", pa.bool_()),
    ]
)

DATABRICKS_SCHEMA: Final = pa.schema(
    [
        _required("databricks_request_id", pa.string()),
        pa.field("client_request_id", pa.string()),
        _required("date", pa.date32()),
        _required("timestamp_ms", pa.int64()),
        _required("status_code", pa.int32()),
        _required("sampling_fraction", pa.float64()),
        _required("execution_time_ms", pa.int64()),
        _required("request", pa.string()),
        pa.field("response", pa.string()),
        _required("request_metadata", pa.map_(pa.string(), pa.string())),
    ]
)

# The column each layout keeps its time in, as epoch milliseconds or a timestamp.
TIME_COLUMN: Final = {PARQUET: "timestamp", DATABRICKS: "timestamp_ms"}


def schema_of(layout: str) -> pa.Schema:
    """The Arrow schema of a layout."""
    return LOG_SCHEMA if layout == PARQUET else DATABRICKS_SCHEMA


class LogRecord(NamedTuple):
    """One inference-log record of either schema version, with `timestamp` as epoch milliseconds."""

    schema_version: int
    request_id: str
    client_request_id: str | None
    timestamp_ms: int
    endpoint: str
    model: str
    variant: str | None
    model_version: str | None
    routing: str | None
    split: dict[str, int] | None
    user_key_hash: str | None
    requester: str | None
    status_code: int
    duration_ms: float
    request: str
    request_encoding: str
    response: str | None
    error: str | None
    truncated: bool

    @property
    def day(self) -> date:
        """The UTC date of the record's timestamp: its partition."""
        return _EPOCH + timedelta(days=self.timestamp_ms // _DAY_MS)


def parse_line(line: bytes) -> LogRecord:
    """The record on a JSON line; raises ValueError if it is not one."""
    try:
        fields = json.loads(line)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    if not isinstance(fields, dict):
        raise ValueError("not a JSON object")
    version = fields.get("schema_version", 1)
    status_code = fields.get("status_code")
    duration_ms = fields.get("duration_ms")
    truncated = fields.get("truncated")
    if not _is_int(version) or not isinstance(status_code, int) or status_code not in _INT32:
        raise ValueError("schema_version and status_code must be integers")
    if isinstance(status_code, bool) or not isinstance(truncated, bool):
        raise ValueError("status_code must be an integer and truncated a boolean")
    if isinstance(duration_ms, bool) or not isinstance(duration_ms, int | float):
        raise ValueError("duration_ms must be a number")
    if not math.isfinite(duration_ms):
        raise ValueError("duration_ms must be finite")
    return LogRecord(
        schema_version=version,
        request_id=_text(fields, "request_id"),
        client_request_id=_optional_text(fields, "client_request_id"),
        timestamp_ms=_epoch_ms(_text(fields, "timestamp")),
        endpoint=_text(fields, "endpoint"),
        model=_text(fields, "model"),
        variant=_optional_text(fields, "variant"),
        model_version=_optional_text(fields, "model_version"),
        routing=_optional_text(fields, "routing"),
        split=_split(fields.get("split")),
        user_key_hash=_optional_text(fields, "user_key_hash"),
        requester=_optional_text(fields, "requester"),
        status_code=status_code,
        duration_ms=float(duration_ms),
        request=_text(fields, "request"),
        request_encoding=_text(fields, "request_encoding"),
        response=_optional_text(fields, "response"),
        error=_optional_text(fields, "error"),
        truncated=truncated,
    )


def to_batch(
    records: Sequence[LogRecord], layout: str, *, sampling_fraction: float
) -> pa.RecordBatch:
    """The records as one Arrow batch of a layout's schema."""
    schema = schema_of(layout)
    if layout == PARQUET:
        rows: list[Sequence[Any]] = list(records)
    else:
        rows = [_databricks_row(record, sampling_fraction) for record in records]
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    arrays = [
        pa.array(column, type=field.type) for column, field in zip(columns, schema, strict=True)
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _databricks_row(record: LogRecord, sampling_fraction: float) -> tuple[Any, ...]:
    metadata = {
        "endpoint_name": record.endpoint,
        "model_name": record.model,
        "model_version": record.model_version,
        # Databricks names the deployed model a served entity; the gateway calls it a variant.
        "served_entity_name": record.variant,
        "variant": record.variant,
        "routing": record.routing,
        "request_encoding": record.request_encoding,
        "truncated": "true" if record.truncated else "false",
        "error": record.error,
        "requester": record.requester,
        "user_key_hash": record.user_key_hash,
        "split": None if record.split is None else json.dumps(record.split, separators=(",", ":")),
        "schema_version": str(record.schema_version),
    }
    return (
        record.request_id,
        record.client_request_id,
        record.day,
        record.timestamp_ms,
        record.status_code,
        sampling_fraction,
        round(record.duration_ms),
        record.request,
        record.response,
        {key: value for key, value in metadata.items() if value is not None},
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _text(fields: Mapping[str, object], name: str) -> str:
    value = fields.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string")
    return value


def _optional_text(fields: Mapping[str, object], name: str) -> str | None:
    return None if fields.get(name) is None else _text(fields, name)


def _split(value: object) -> dict[str, int] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(
        isinstance(key, str) and _is_int(weight) and -(2**63) <= weight < 2**63
        for key, weight in value.items()
    ):
        raise ValueError("split must map variant names to integers")
    return value


def _epoch_ms(text: str) -> int:
    """Milliseconds since the epoch of an ISO 8601 time, UTC unless it says otherwise."""
    return epoch_ms(datetime.fromisoformat(text))


def epoch_ms(moment: datetime) -> int:
    """Whole milliseconds since the epoch of a time, UTC unless it says otherwise (no float error)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)
