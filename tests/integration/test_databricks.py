"""The Databricks SDK, with only its host changed, queries a real gateway as it would Databricks.

`WorkspaceClient(host="http://127.0.0.1:PORT", token=...)` takes a plain-http host as it is. On
construction it GETs `/.well-known/databricks-config` (best effort: the gateway's 404 makes it log
a warning and use the configuration given); `serving_endpoints.query` POSTs the JSON body to
`/serving-endpoints/{name}/invocations` with `Authorization: Bearer <token>`, and reads the
`served-model-name` header into `served_model_name`.
"""

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.config import Config
from databricks.sdk.errors import BadRequest, NotFound
from databricks.sdk.service.serving import DataframeSplitInput, QueryEndpointResponse

from gateway.commands.demo import FEATURES, MODEL_NAME
from gateway.core.config import GatewayConfig
from tests.helpers import read_records
from tests.integration.conftest import running_gateway

ROWS: list[list[Any]] = [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"], [12, 55.25, 2, "plus"]]
RECORDS = [dict(zip(FEATURES, row, strict=True)) for row in ROWS]
COLUMNS = {name: [row[i] for row in ROWS] for i, name in enumerate(FEATURES)}

# Each input format: the SDK's keyword argument, and the plain MLflow document it stands for.
FORMATS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "dataframe_split": (
        {"dataframe_split": DataframeSplitInput(columns=list(FEATURES), data=ROWS)},
        {"dataframe_split": {"columns": list(FEATURES), "data": ROWS}},
    ),
    "dataframe_records": ({"dataframe_records": RECORDS}, {"dataframe_records": RECORDS}),
    "instances": ({"instances": RECORDS}, {"instances": RECORDS}),
    "inputs": ({"inputs": COLUMNS}, {"inputs": COLUMNS}),
}


@pytest.fixture
def workspace(monkeypatch: pytest.MonkeyPatch) -> Callable[..., WorkspaceClient]:
    """An SDK client on a gateway's URL, unaffected by any Databricks settings of the machine."""
    for name in list(os.environ):
        if name.startswith("DATABRICKS_"):
            monkeypatch.delenv(name)

    def client(url: str, headers: dict[str, str] | None = None) -> WorkspaceClient:
        # A short retry budget: a failure is reported at once, not after the SDK's 5 minutes.
        config = Config(host=url, token="x", retry_timeout_seconds=10, custom_headers=headers)
        return WorkspaceClient(config=config)

    return client


def served(response: QueryEndpointResponse) -> tuple[str, str]:
    """The variant and version named by `served_model_name` (`champion-1`)."""
    assert response.served_model_name is not None
    variant, _, version = response.served_model_name.rpartition("-")
    return variant, version


@pytest.mark.parametrize("input_format", list(FORMATS))
def test_query_answers_a_plain_posts_predictions_and_names_the_variant(
    gateway_url: str, workspace: Callable[..., WorkspaceClient], input_format: str
) -> None:
    sdk_input, document = FORMATS[input_format]
    response = workspace(gateway_url).serving_endpoints.query(
        name="churn", client_request_id="abc-1", usage_context={"team": "growth"}, **sdk_input
    )
    variant, version = served(response)
    assert (variant, version) in {("champion", "1"), ("challenger", "2")}
    plain = httpx.post(
        f"{gateway_url}/endpoints/churn/invocations",
        json=document,
        headers={"x-gateway-variant": variant},
    )
    assert plain.status_code == 200
    assert plain.headers["x-gateway-model-version"] == version
    assert plain.headers["served-model-name"] == response.served_model_name
    assert response.predictions is not None
    assert response.predictions == plain.json()["predictions"]
    assert len(response.predictions) == len(ROWS)


def test_both_variants_are_named_as_they_serve(
    make_config: Callable[..., GatewayConfig], workspace: Callable[..., WorkspaceClient]
) -> None:
    # The SDK sends no sticky key: each query is a draw, and 40 draws of 50/50 give both.
    config = make_config(
        [
            {
                "name": "churn",
                "model": MODEL_NAME,
                "variants": [
                    {"alias": "champion", "weight": 50},
                    {"alias": "challenger", "weight": 50},
                ],
            }
        ]
    )
    with running_gateway(config) as url:
        client = workspace(url)
        names = {
            client.serving_endpoints.query(
                name="churn", dataframe_records=RECORDS
            ).served_model_name
            for _ in range(40)
        }
    assert names == {"champion-1", "challenger-2"}


def test_the_sdks_custom_headers_force_a_variant_or_keep_a_user_on_one(
    gateway_url: str, workspace: Callable[..., WorkspaceClient]
) -> None:
    forced = workspace(gateway_url, {"x-gateway-variant": "challenger"}).serving_endpoints
    assert forced.query(name="churn", dataframe_records=RECORDS).served_model_name == "challenger-2"
    sticky = workspace(gateway_url, {"X-User-Id": "alice"}).serving_endpoints
    names = {
        sticky.query(name="churn", dataframe_records=RECORDS).served_model_name for _ in range(8)
    }
    assert len(names) == 1


def test_the_log_keeps_the_client_request_id_and_the_body_as_sent(
    make_config: Callable[..., GatewayConfig],
    workspace: Callable[..., WorkspaceClient],
    tmp_path: Path,
) -> None:
    answers: dict[str, QueryEndpointResponse] = {}
    with running_gateway(make_config(inference_log={"dir": str(tmp_path)})) as url:
        client = workspace(url)
        for input_format, (sdk_input, _) in FORMATS.items():
            answers[f"req-{input_format}"] = client.serving_endpoints.query(
                name="churn",
                client_request_id=f"req-{input_format}",
                usage_context={"team": "growth"},
                **sdk_input,
            )
    records = {record["client_request_id"]: record for record in read_records(tmp_path)}
    assert set(records) == set(answers)
    for client_request_id, answer in answers.items():
        record = records[client_request_id]
        assert (record["status_code"], record["error"]) == (200, None)
        assert f"{record['variant']}-{record['model_version']}" == answer.served_model_name
        assert json.loads(record["response"])["predictions"] == answer.predictions
        # The body as the SDK sent it, the fields beside the input included; no requester yet.
        sent = json.loads(record["request"])
        assert (sent["client_request_id"], sent["usage_context"]) == (
            client_request_id,
            {"team": "growth"},
        )
        assert record["requester"] is None


def test_a_bearer_token_is_accepted_and_ignored(gateway_url: str) -> None:
    document = {"dataframe_records": RECORDS, "databricks_options": {"return_trace": False}}
    forced = {"x-gateway-variant": "champion"}
    url = f"{gateway_url}/serving-endpoints/churn/invocations"
    with_token = httpx.post(url, json=document, headers={**forced, "Authorization": "Bearer x"})
    without = httpx.post(url, json=document, headers=forced)
    assert (with_token.status_code, with_token.content) == (200, without.content)
    assert with_token.headers["served-model-name"] == "champion-1"


def test_errors_reach_the_sdk_as_its_own_exceptions(
    gateway_url: str, workspace: Callable[..., WorkspaceClient]
) -> None:
    client = workspace(gateway_url)
    with pytest.raises(NotFound, match="No endpoint named 'fraud'"):
        client.serving_endpoints.query(name="fraud", dataframe_records=RECORDS)
    with pytest.raises(BadRequest, match="exactly one of the input fields"):
        client.serving_endpoints.query(name="churn", client_request_id="no-input")
