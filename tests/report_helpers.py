"""Inference-log records and outcome files for the report's tests, made with the real record code."""

import json
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway.core.record import build_record, user_key_hash

SECRET = "a-secret-of-the-deployment"
START = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC).timestamp()
FEATURES = ["tenure_months", "monthly_charges", "support_calls", "plan"]


def record(request_id: str, **overrides: Any) -> dict[str, Any]:
    """A real inference-log record (gateway.core.record.build_record) with test defaults.

    `user` (a raw user key) becomes `user_key_hash` under SECRET; `prediction` the response.
    """
    user = overrides.pop("user", None)
    prediction = overrides.pop("prediction", 0)
    row = overrides.pop("row", [3, 89.5, 4, "basic"])
    arguments: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": START,
        "endpoint": "churn",
        "model": "churn",
        "variant": "champion",
        "model_version": "1",
        "routing": "sticky" if user is not None else "random",
        "split": {"champion": 50, "challenger": 50},
        "user_key_hash": None if user is None else user_key_hash(user, SECRET.encode()),
        "requester": None,
        "client_request_id": None,
        "status_code": 200,
        "duration_ms": 4.5,
        "request_body": json.dumps(
            {"dataframe_split": {"columns": FEATURES, "data": [row]}}
        ).encode(),
        "content_type": "application/json",
        "response_body": json.dumps({"predictions": [prediction]}).encode(),
        "error": None,
        "max_payload_bytes": None,
    }
    arguments.update(overrides)
    if arguments["status_code"] != 200:
        arguments["response_body"] = None
        arguments["error"] = arguments["error"] or "failed"
    return build_record(**arguments)


def write_log(
    path: Path, records: Iterable[dict[str, Any]], extra_lines: Iterable[str] = ()
) -> Path:
    """Records as JSON Lines (plus any raw lines), as the gateway's writer writes them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as file:
        for item in records:
            file.write(json.dumps(item, separators=(",", ":")) + "\n")
        for line in extra_lines:
            file.write(line + "\n")
    return path


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[object]]) -> Path:
    """A small CSV file."""
    lines = [",".join(header), *(",".join(str(cell) for cell in row) for row in rows)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
