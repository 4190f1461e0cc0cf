"""Generated hostile requests against a real server: no 5xx, no echo, every answer recorded once."""

import json
import string
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
from tests.helpers import read_records
from tests.integration.conftest import running_gateway

CANARY = "CANARYq7Z"
EXAMPLES = 1500
MAX_BYTES = 65_536

canary = st.text(string.ascii_letters, max_size=8).map(lambda tail: CANARY + tail)
cell = st.one_of(
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    canary,
    st.text(max_size=20),
)
column = st.one_of(st.sampled_from(FEATURES), canary)


@st.composite
def json_bodies(draw: st.DrawFn) -> bytes:
    """JSON documents of every input format, with canaries planted in names and values."""
    columns = draw(st.lists(column, min_size=1, max_size=6))
    rows = draw(st.lists(st.lists(cell, min_size=len(columns), max_size=len(columns)), max_size=4))
    key = draw(st.sampled_from(["dataframe_split", "dataframe_records", "instances", "inputs"]))
    document: dict[str, Any]
    if key == "dataframe_split":
        document = {key: {"columns": columns, "data": rows}}
    elif key == "dataframe_records":
        document = {key: [dict(zip(columns, row, strict=True)) for row in rows]}
    else:
        document = {key: draw(st.one_of(st.lists(cell, max_size=4), canary, cell))}
    if draw(st.booleans()):
        document["params"] = draw(st.one_of(st.dictionaries(canary, cell, max_size=2), canary))
    if draw(st.booleans()):
        document[draw(canary)] = draw(cell)
    return json.dumps(document).encode()


@st.composite
def csv_bodies(draw: st.DrawFn) -> bytes:
    """CSV with canaries as headers and cells."""
    columns = draw(st.lists(column, min_size=1, max_size=5))
    rows = draw(st.lists(st.lists(cell, min_size=len(columns), max_size=len(columns)), max_size=3))
    lines = [",".join(columns)] + [",".join(str(value) for value in row) for row in rows]
    return "\n".join(lines).encode()


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, dict[str, str], bytes]:
    """A path, headers and a body, any of which may carry a canary."""
    kind = draw(st.sampled_from(["json", "csv", "bytes"]))
    if kind == "json":
        body, content_type = draw(json_bodies()), "application/json"
    elif kind == "csv":
        body, content_type = draw(csv_bodies()), "text/csv"
    else:
        body, content_type = (
            draw(st.binary(max_size=200)),
            draw(st.sampled_from(["application/vnd.apache.parquet", "application/json"])),
        )
    if draw(st.integers(0, 9)) == 0:
        content_type = draw(canary)
    headers = {"content-type": content_type}
    if draw(st.integers(0, 9)) == 0:
        headers["x-gateway-variant"] = draw(canary)
    path = draw(
        st.sampled_from(["/invocations", "/endpoints/churn/invocations"])
        | canary.map(lambda name: f"/endpoints/{name}/invocations")
    )
    return path, headers, body


def test_generated_requests_never_get_a_5xx_or_an_echo_and_each_answer_is_recorded_once(
    make_config: Callable[..., GatewayConfig], tmp_path: Path
) -> None:
    config = make_config(inference_log={"dir": str(tmp_path)}, max_request_bytes=MAX_BYTES)
    answered: dict[str, tuple[int, str]] = {}
    with running_gateway(config) as url, httpx.Client(base_url=url, timeout=30) as client:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        )
        @given(requests())
        def send(request: tuple[str, dict[str, str], bytes]) -> None:
            path, headers, body = request
            request_id = f"fuzz-{len(answered)}"
            response = client.post(
                path, content=body, headers={**headers, "x-request-id": request_id}
            )
            assert response.status_code < 500, (response.status_code, response.text)
            assert CANARY not in response.text, response.text
            shown = {k: v for k, v in response.headers.items() if k != "x-request-id"}
            assert CANARY not in json.dumps(shown), shown
            answered[request_id] = (response.status_code, path)

        send()
    logged = Counter(record["request_id"] for record in read_records(tmp_path))
    served = {
        request_id
        for request_id, (_, path) in answered.items()
        if path in ("/invocations", "/endpoints/churn/invocations")
    }
    # An unknown endpoint reached no model and is not logged; every other answer is, once.
    assert {request_id: logged[request_id] for request_id in served} == dict.fromkeys(served, 1)
    assert len(answered) >= EXAMPLES
