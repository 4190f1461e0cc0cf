"""Parity with `mlflow models serve`: the same requests to both, on the same registry version.

Every case says what must hold between MLflow's answer and the gateway's:
- SAME: status, content type and body are identical, byte for byte.
- One of the deliberate deviations listed in the README (`Parity with mlflow models serve`).
"""

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import httpx
import pandas as pd
import pytest

from gateway.commands.demo import FEATURES, MODEL_NAME
from gateway.core.config import GatewayConfig
from tests.integration.conftest import free_port, running_gateway, wait_until

pytestmark = pytest.mark.slow


class Parity(StrEnum):
    SAME = "same"
    # Same status and error_code; the message never quotes the payload or a stack trace.
    SAME_ERROR_CODE = "same error_code, message without payload"
    # MLflow answers 415 as text/plain; the gateway answers the same status with a JSON error.
    JSON_415 = "415 as JSON"
    # MLflow answers 500 (a crash) for a client's mistake; the gateway answers 4xx with JSON.
    CLIENT_ERROR_NOT_500 = "4xx instead of 500"
    # MLflow rejects what RFC 9110 allows (case-insensitive media types, quoted parameters).
    ACCEPTED_PER_RFC = "accepted per RFC 9110"
    # FastAPI's `{"detail": ...}` for unknown routes; the gateway answers MLflow-style JSON.
    ROUTE_ERROR_JSON = "MLflow-style 404/405"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes | None
    content_type: str | None = "application/json"
    parity: Parity = Parity.SAME
    method: str = "POST"
    path: str = "/invocations"


def _json(document: object) -> bytes:
    return json.dumps(document).encode()


def _parquet(frame: pd.DataFrame) -> bytes:
    out = io.BytesIO()
    frame.to_parquet(out)
    return out.getvalue()


COLUMNS = list(FEATURES)
ROW = [3, 89.5, 4, "basic"]
ROWS = [ROW, [48, 30.0, 0, "pro"], [12, 55.25, 2, "plus"], [70, 110.0, 7, "basic"]]
RECORDS = [dict(zip(COLUMNS, row, strict=True)) for row in ROWS]
FRAME = pd.DataFrame(RECORDS)
CSV = FRAME.to_csv(index=False).encode()

CASES = [
    # dataframe_split
    Case("split, one row", _json({"dataframe_split": {"columns": COLUMNS, "data": [ROW]}})),
    Case("split, four rows", _json({"dataframe_split": {"columns": COLUMNS, "data": ROWS}})),
    Case(
        "split with index",
        _json({"dataframe_split": {"index": [10, 11, 12, 13], "columns": COLUMNS, "data": ROWS}}),
    ),
    Case(
        "split, permuted columns",
        _json({"dataframe_split": {"columns": COLUMNS[::-1], "data": [row[::-1] for row in ROWS]}}),
    ),
    Case(
        "split, missing column",
        _json({"dataframe_split": {"columns": COLUMNS[:3], "data": [ROW[:3]]}}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "split, extra column",
        _json({"dataframe_split": {"columns": [*COLUMNS, "x"], "data": [[*ROW, 1]]}}),
    ),
    Case(
        "split, text in a long column",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [["three", 89.5, 4, "basic"]]}}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "split, fraction in a long column",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [[3.5, 89.5, 4, "basic"]]}}),
    ),
    Case(
        "split, integer in a double column",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [[3, 89, 4, "basic"]]}}),
    ),
    Case(
        "split, null in a long column",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [[None, 89.5, 4, "basic"]]}}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "split, number in a string column",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [[3, 89.5, 4, 7]]}}),
    ),
    Case(
        "split, unicode string",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [[3, 89.5, 4, "prémium ✓"]]}}),
    ),
    Case(
        "split, empty data",
        _json({"dataframe_split": {"columns": COLUMNS, "data": []}}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case("split, not an object", _json({"dataframe_split": "rows"})),
    Case(
        "split, ragged rows",
        _json({"dataframe_split": {"columns": COLUMNS, "data": [ROW[:2]]}}),
        parity=Parity.SAME,
    ),
    # dataframe_records
    Case("records, one", _json({"dataframe_records": RECORDS[:1]})),
    Case("records, four", _json({"dataframe_records": RECORDS})),
    Case(
        "records, missing key",
        _json({"dataframe_records": [{k: v for k, v in RECORDS[0].items() if k != "plan"}]}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "records, wrong type",
        _json({"dataframe_records": [{**RECORDS[0], "support_calls": "many"}]}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case("records, empty list", _json({"dataframe_records": []}), parity=Parity.SAME_ERROR_CODE),
    # instances and inputs
    Case("instances, list of objects", _json({"instances": RECORDS})),
    Case(
        "instances, object of columns",
        _json({"instances": {c: [r[c] for r in RECORDS] for c in COLUMNS}}),
    ),
    Case(
        "inputs, object of columns",
        _json({"inputs": {c: [r[c] for r in RECORDS] for c in COLUMNS}}),
    ),
    Case("inputs, list of objects", _json({"inputs": RECORDS})),
    Case(
        "inputs, list of lists",
        _json({"inputs": ROWS}),
        # MLflow quotes the cell it could not cast; the gateway never echoes request data.
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case("inputs, a scalar", _json({"inputs": 5}), parity=Parity.SAME_ERROR_CODE),
    # params and keys
    Case(
        "params the model does not declare",
        _json({"dataframe_records": RECORDS[:1], "params": {"threshold": 0.3}}),
    ),
    Case("params, null", _json({"dataframe_records": RECORDS[:1], "params": None})),
    Case(
        "two format keys",
        _json({"dataframe_records": RECORDS, "inputs": RECORDS}),
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case("unknown key only", _json({"data": RECORDS}), parity=Parity.SAME_ERROR_CODE),
    Case("unknown key beside a format key", _json({"dataframe_records": RECORDS[:1], "extra": 1})),
    Case("empty object", _json({}), parity=Parity.SAME_ERROR_CODE),
    Case("top-level list", _json(RECORDS), parity=Parity.SAME_ERROR_CODE),
    Case("top-level number", b"42", parity=Parity.SAME_ERROR_CODE),
    # malformed JSON
    Case("malformed JSON", b'{"dataframe_records": [', parity=Parity.SAME_ERROR_CODE),
    Case("empty JSON body", b"", parity=Parity.SAME_ERROR_CODE),
    Case("JSON, invalid UTF-8", b'{"inputs": "\xff\xfe"}', parity=Parity.SAME_ERROR_CODE),
    Case(
        "JSON with NaN",
        b'{"dataframe_split": {"columns": ["tenure_months", "monthly_charges", "support_calls", "plan"], "data": [[3, NaN, 4, "basic"]]}}',
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "deeply nested JSON",
        b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        parity=Parity.CLIENT_ERROR_NOT_500,
    ),
    # CSV
    Case("CSV, four rows", CSV, "text/csv"),
    Case("CSV with charset", CSV, "text/csv; charset=utf-8"),
    Case("CSV, permuted columns", FRAME[COLUMNS[::-1]].to_csv(index=False).encode(), "text/csv"),
    Case(
        "CSV, missing column",
        FRAME[COLUMNS[:3]].to_csv(index=False).encode(),
        "text/csv",
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "CSV, wrong type",
        b"tenure_months,monthly_charges,support_calls,plan\nthree,1.0,2,basic\n",
        "text/csv",
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case(
        "CSV, header only",
        b"tenure_months,monthly_charges,support_calls,plan\n",
        "text/csv",
        parity=Parity.SAME_ERROR_CODE,
    ),
    Case("CSV, empty body", b"", "text/csv", parity=Parity.SAME_ERROR_CODE),
    Case("CSV, invalid UTF-8", b"tenure_months\n\xff\n", "text/csv", parity=Parity.SAME_ERROR_CODE),
    # Parquet
    Case("Parquet, four rows", _parquet(FRAME), "application/vnd.apache.parquet"),
    Case(
        "Parquet, garbage",
        b"PAR1 not really",
        "application/vnd.apache.parquet",
        parity=Parity.SAME_ERROR_CODE,
    ),
    # content types
    Case(
        "JSON with charset=utf-8",
        _json({"dataframe_records": RECORDS[:1]}),
        "application/json; charset=utf-8",
    ),
    Case(
        "JSON with charset=UTF-8",
        _json({"dataframe_records": RECORDS[:1]}),
        "application/json; charset=UTF-8",
    ),
    Case(
        "JSON with charset=latin-1",
        _json({"dataframe_records": RECORDS[:1]}),
        "application/json; charset=latin-1",
        parity=Parity.JSON_415,
    ),
    Case(
        "unknown content type parameter",
        _json({"dataframe_records": RECORDS[:1]}),
        "application/json; format=pandas-split",
        parity=Parity.JSON_415,
    ),
    Case(
        "text/plain",
        _json({"dataframe_records": RECORDS[:1]}),
        "text/plain",
        parity=Parity.JSON_415,
    ),
    Case(
        "no content type",
        _json({"dataframe_records": RECORDS[:1]}),
        None,
        parity=Parity.CLIENT_ERROR_NOT_500,
    ),
    Case(
        "media type in capitals",
        _json({"dataframe_records": RECORDS[:1]}),
        "Application/JSON",
        parity=Parity.ACCEPTED_PER_RFC,
    ),
    # routes
    Case("GET /invocations", None, None, parity=Parity.ROUTE_ERROR_JSON, method="GET"),
    Case("unknown path", _json({}), parity=Parity.ROUTE_ERROR_JSON, path="/predict"),
    Case("GET /ping", None, None, method="GET", path="/ping"),
    Case("GET /version", None, None, method="GET", path="/version"),
]


@pytest.fixture(scope="module")
def mlflow_url(tracking_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """MLflow's own scoring server for models:/churn@champion, on loopback."""
    port = free_port()
    log_path = tmp_path_factory.mktemp("mlflow-serve") / "serve.log"
    log = log_path.open("wb")
    # MLflow starts its server as `uvicorn ...` through the shell: the interpreter's bin on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking_uri, "PATH": path}
    command = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        f"models:/{MODEL_NAME}@champion",
        "--env-manager",
        "local",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"

    def answering() -> bool:
        if process.poll() is not None:
            pytest.fail(
                f"mlflow models serve exited with {process.returncode}: {log_path.read_text()[-2000:]}"
            )
        return httpx.get(f"{url}/ping").status_code == 200

    try:
        wait_until(answering, "mlflow models serve")
        yield url
    finally:
        process.terminate()
        process.wait(30)
        log.close()


@pytest.fixture(scope="module")
def champion_only_url(make_config: Callable[..., GatewayConfig]) -> Iterator[str]:
    config = make_config(
        [{"name": "churn", "model": MODEL_NAME, "variants": [{"alias": "champion"}]}]
    )
    with running_gateway(config) as url:
        yield url


def _send(url: str, case: Case) -> httpx.Response:
    headers = {} if case.content_type is None else {"Content-Type": case.content_type}
    return httpx.request(
        case.method, url + case.path, content=case.body, headers=headers, timeout=30
    )


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_gateway_answers_as_mlflow_scoring_server_does(
    case: Case, mlflow_url: str, champion_only_url: str
) -> None:
    theirs, ours = _send(mlflow_url, case), _send(champion_only_url, case)
    if case.parity is Parity.SAME:
        assert (ours.status_code, ours.headers["content-type"], ours.content) == (
            theirs.status_code,
            theirs.headers["content-type"],
            theirs.content,
        )
        return
    if case.parity is Parity.ACCEPTED_PER_RFC:
        assert theirs.status_code == 415
        reference = _send(mlflow_url, Case("the same, as MLflow accepts it", case.body))
        assert (ours.status_code, ours.content) == (200, reference.content)
        return
    # Every other deviation answers with a JSON error body that quotes neither payload nor traceback.
    error = ours.json()
    assert ours.headers["content-type"] == "application/json"
    assert set(error) <= {"error_code", "message", "sqlstate", "error_class"}
    assert "Traceback" not in error["message"]
    if case.parity is Parity.SAME_ERROR_CODE:
        assert theirs.status_code == ours.status_code
        assert theirs.json()["error_code"] == error["error_code"]
        assert ours.content != theirs.content, "identical answers: declare the case SAME"
    elif case.parity is Parity.JSON_415:
        assert (theirs.status_code, theirs.headers["content-type"]) == (
            415,
            "text/plain; charset=utf-8",
        )
        assert (ours.status_code, error["error_code"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    elif case.parity is Parity.CLIENT_ERROR_NOT_500:
        assert theirs.status_code == 500
        assert 400 <= ours.status_code < 500
    elif case.parity is Parity.ROUTE_ERROR_JSON:
        assert theirs.status_code == ours.status_code
        assert "detail" in theirs.json()
    else:
        pytest.fail(f"unchecked parity {case.parity}")


def test_parity_table_covers_every_format_and_at_least_forty_requests() -> None:
    assert len(CASES) >= 40
    bodies = b" ".join(case.body or b"" for case in CASES)
    for key in (
        b"dataframe_split",
        b"dataframe_records",
        b"instances",
        b"inputs",
        b"params",
        b'"index"',
    ):
        assert key in bodies
    assert {case.content_type for case in CASES} >= {
        "application/json",
        "text/csv",
        "application/vnd.apache.parquet",
        None,
    }
