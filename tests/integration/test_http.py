"""The HTTP surface of a real gateway on loopback, serving real registry versions."""

import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import mlflow
import pytest

from gateway.core.config import GatewayConfig
from gateway.serving.registry import LoadedModel, ModelVersion, Registry
from tests.integration.conftest import running_gateway, split_payload, wait_healthy

ROWS: list[list[object]] = [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"], [12, 55.25, 2, "plus"]]


def invoke(
    url: str, headers: dict[str, str] | None = None, path: str = "/invocations"
) -> httpx.Response:
    return httpx.post(url + path, json=split_payload(ROWS), headers=headers or {})


def test_ping_version_and_health_answer(gateway_url: str) -> None:
    assert httpx.get(f"{gateway_url}/ping").status_code == 200
    assert httpx.get(f"{gateway_url}/health").status_code == 200
    version = httpx.get(f"{gateway_url}/version")
    assert version.text == mlflow.__version__


def test_endpoints_lists_variants_versions_and_weights(gateway_url: str) -> None:
    (endpoint,) = httpx.get(f"{gateway_url}/endpoints").json()
    assert endpoint["name"] == "churn"
    assert [
        (v["variant"], v["model_version"], v["weight"], v["loaded"]) for v in endpoint["variants"]
    ] == [
        ("champion", "1", 90, True),
        ("challenger", "2", 10, True),
    ]
    assert endpoint["variants"][0]["reference"] == "models:/churn@champion"


def test_every_invocation_says_which_variant_and_version_served(gateway_url: str) -> None:
    response = invoke(gateway_url, {"x-request-id": "req-123"})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "req-123"
    assert (response.headers["x-gateway-variant"], response.headers["x-gateway-model-version"]) in {
        ("champion", "1"),
        ("challenger", "2"),
    }
    generated = invoke(gateway_url).headers["x-request-id"]
    assert len(generated) == 32
    assert generated != invoke(gateway_url).headers["x-request-id"]


def test_named_endpoint_path_serves_the_same_model(gateway_url: str) -> None:
    forced = {"x-gateway-variant": "champion"}
    assert (
        invoke(gateway_url, forced, "/endpoints/churn/invocations").content
        == invoke(gateway_url, forced).content
    )


def test_unknown_endpoint_is_a_json_404(gateway_url: str) -> None:
    response = invoke(gateway_url, path="/endpoints/fraud/invocations")
    assert response.status_code == 404
    assert response.json() == {
        "error_code": "ENDPOINT_NOT_FOUND",
        "message": "No endpoint named 'fraud'. Endpoints: churn.",
    }


@pytest.mark.parametrize(("variant", "version"), [("champion", "1"), ("challenger", "2")])
def test_forced_variant_is_served_by_its_version(
    gateway_url: str, variant: str, version: str, loaded_versions: dict[str, Any]
) -> None:
    response = invoke(gateway_url, {"x-gateway-variant": variant})
    assert (response.headers["x-gateway-variant"], response.headers["x-gateway-model-version"]) == (
        variant,
        version,
    )
    assert response.json()["predictions"] == loaded_versions[version]


def test_forcing_an_unknown_variant_is_a_400_naming_the_valid_ones(gateway_url: str) -> None:
    response = invoke(gateway_url, {"x-gateway-variant": "candidate"})
    assert response.status_code == 400
    assert response.json()["message"] == (
        "Unknown variant in the x-gateway-variant header; endpoint 'churn' has: champion, challenger."
    )


def test_the_same_user_always_gets_the_same_variant(gateway_url: str) -> None:
    for user in ("alice", "bob", "carol", "dave"):
        served = {
            invoke(gateway_url, {"X-User-Id": user}).headers["x-gateway-variant"] for _ in range(8)
        }
        assert len(served) == 1


def test_users_are_split_by_weight(gateway_url: str) -> None:
    served = Counter(
        invoke(gateway_url, {"X-User-Id": f"user-{n}"}).headers["x-gateway-variant"]
        for n in range(300)
    )
    # 90/10 over 300 fixed users: the challenger's count is Binomial(300, 0.1), sd ~5.2; 5 sd either side.
    assert 4 <= served["challenger"] <= 56
    assert served["champion"] + served["challenger"] == 300


def test_a_body_over_the_limit_is_a_413(make_config: Callable[..., GatewayConfig]) -> None:
    with running_gateway(make_config(max_request_bytes=2048)) as url:
        response = httpx.post(
            f"{url}/invocations", content=b"x" * 4096, headers={"Content-Type": "application/json"}
        )
        assert (response.status_code, response.json()["error_code"]) == (413, "PAYLOAD_TOO_LARGE")
        assert invoke(url).status_code == 200


def test_a_streamed_body_is_read_whole_and_capped_as_it_arrives(
    make_config: Callable[..., GatewayConfig],
) -> None:
    body = httpx.Request("POST", "/", json=split_payload(ROWS)).read()

    def chunks(data: bytes, size: int) -> Iterator[bytes]:
        yield from (data[start : start + size] for start in range(0, len(data), size))

    headers = {"Content-Type": "application/json"}
    with running_gateway(make_config(max_request_bytes=2048)) as url:
        # No Content-Length: chunked transfer encoding, the body in several ASGI messages.
        streamed = httpx.post(f"{url}/invocations", content=chunks(body, 16), headers=headers)
        assert streamed.status_code == 200
        assert streamed.content == invoke(url).content
        too_long = httpx.post(
            f"{url}/invocations", content=chunks(b"x" * 4096, 512), headers=headers
        )
        assert (too_long.status_code, too_long.json()["error_code"]) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize("path", ["/invocations", "/endpoints/churn/invocations"])
def test_invocations_take_only_post(gateway_url: str, path: str) -> None:
    response = httpx.get(gateway_url + path)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.json() == {
        "error_code": "METHOD_NOT_ALLOWED",
        "message": f"GET is not allowed on {path}.",
    }


def test_forcing_is_refused_where_the_endpoint_does_not_allow_it(
    make_config: Callable[..., GatewayConfig],
) -> None:
    config = make_config(
        [
            {
                "name": "churn",
                "model": "churn",
                "allow_override": False,
                "variants": [{"alias": "champion"}, {"alias": "challenger"}],
            }
        ]
    )
    with running_gateway(config) as url:
        response = invoke(url, {"x-gateway-variant": "challenger"})
        assert response.status_code == 400
        assert "does not allow" in response.json()["message"]


class GatedRegistry(Registry):
    """The real registry, whose loads wait until the test opens the gate."""

    def __init__(self, tracking_uri: str | None, gate: threading.Event) -> None:
        super().__init__(tracking_uri, None)
        self._gate = gate

    def load(self, version: ModelVersion) -> LoadedModel:
        self._gate.wait(60)
        return super().load(version)


def test_health_is_503_and_invocations_wait_until_every_variant_is_loaded(
    make_config: Callable[..., GatewayConfig],
) -> None:
    config = make_config()
    gate = threading.Event()
    with running_gateway(
        config, wait_ready=False, registry=GatedRegistry(config.tracking_uri, gate)
    ) as url:
        assert httpx.get(f"{url}/ping").status_code == 200
        health = httpx.get(f"{url}/health")
        assert (health.status_code, health.json()["error_code"]) == (503, "TEMPORARILY_UNAVAILABLE")
        assert invoke(url).status_code == 503
        gate.set()
        wait_healthy(url, "the models to load")
        assert invoke(url).status_code == 200


@pytest.fixture(scope="module")
def loaded_versions(make_config: Callable[..., GatewayConfig]) -> dict[str, Any]:
    """Predictions for ROWS computed by each version's pyfunc model directly."""
    import pandas as pd

    from gateway.commands.demo import FEATURES

    registry = Registry(make_config().tracking_uri, None)
    frame = pd.DataFrame(ROWS, columns=list(FEATURES))
    return {
        version: registry.load(ModelVersion("churn", version, None)).pyfunc.predict(frame).tolist()
        for version in ("1", "2")
    }


def test_metrics_speak_prometheus_text_or_openmetrics_as_asked(gateway_url: str) -> None:
    invoke(gateway_url)
    plain = httpx.get(f"{gateway_url}/metrics")
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert "gateway_requests_total{" in plain.text
    open_metrics = httpx.get(
        f"{gateway_url}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
