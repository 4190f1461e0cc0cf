"""Adaptive batching on a real server: merged predict calls, answers as if each request were alone."""

import threading
from collections.abc import Callable

import httpx
import pytest

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
from tests.helpers import sample, scrape
from tests.integration import models
from tests.integration.conftest import running_gateway, wait_until


@pytest.fixture(scope="module")
def probe(tracking_uri: str) -> str:
    models.register("batchprobe", "champion", models.BatchProbeModel(), tracking_uri)
    return "batchprobe"


def _config(
    make_config: Callable[..., GatewayConfig],
    model: str,
    max_batch_size: int = 64,
    max_wait_ms: float = 0,
) -> GatewayConfig:
    return make_config(
        [
            {
                "name": model,
                "model": model,
                "variants": [{"alias": "champion"}],
                "batching": {"max_batch_size": max_batch_size, "max_wait_ms": max_wait_ms},
            }
        ]
    )


def _body(tenures: list[int]) -> dict[str, object]:
    return {
        "dataframe_split": {
            "columns": list(FEATURES),
            "data": [[t, 50.0, t % 4, "basic"] for t in tenures],
        }
    }


def _queued(url: str, endpoint: str) -> float:
    # Other endpoints batch too (auto): only this endpoint's queue counts.
    return sample(scrape(url), "gateway_batch_queue_depth", endpoint=endpoint, variant="champion")


def _send_behind_a_held_batch(
    url: str, requests: dict[str, list[int]]
) -> dict[str, httpx.Response]:
    """Hold the model on a first request, queue `requests` behind it, then let them all go."""
    answers: dict[str, httpx.Response] = {}

    def send(name: str, tenures: list[int]) -> None:
        answers[name] = httpx.post(f"{url}/invocations", json=_body(tenures), timeout=60)

    models.GATE.clear()
    models.BATCH_CALLS.clear()
    try:
        first = threading.Thread(target=send, args=("first", [7]))
        first.start()
        wait_until(lambda: models.BATCH_CALLS == [1], "the first request to hold the model")
        others = [threading.Thread(target=send, args=item) for item in requests.items()]
        for thread in others:
            thread.start()
        wait_until(
            lambda: _queued(url, "batchprobe") == len(requests), "every request to queue behind it"
        )
    finally:
        models.GATE.set()
    for thread in [first, *others]:
        thread.join(60)
    return answers


def test_concurrent_requests_share_a_predict_call_and_each_gets_its_own_answer(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    requests = {f"r{n}": [n * 3 + 20, n * 3 + 21][: 1 + n % 2] for n in range(8)}
    requests["poisoned"] = [20, 13]
    with running_gateway(_config(make_config, probe)) as url:
        answers = _send_behind_a_held_batch(url, requests)
    assert answers["first"].json() == {"predictions": [70 + 7 % 4]}
    # One merged call for the nine waiting requests failed on the poisoned row; then each went alone.
    assert models.BATCH_CALLS[:2] == [1, sum(len(t) for t in requests.values())]
    assert sorted(models.BATCH_CALLS[2:]) == sorted(len(t) for t in requests.values())
    for name, tenures in requests.items():
        if name == "poisoned":
            assert answers[name].status_code == 400
        else:
            assert answers[name].json() == {"predictions": [t * 10 + t % 4 for t in tenures]}


@pytest.mark.parametrize("batching", [True, False], ids=["batched", "unbatched"])
def test_a_prediction_past_the_request_timeout_is_a_504_and_serving_goes_on(
    make_config: Callable[..., GatewayConfig], probe: str, batching: bool
) -> None:
    endpoint: dict[str, object] = {
        "name": probe,
        "model": probe,
        "variants": [{"alias": "champion"}],
    }
    if batching:
        endpoint["batching"] = {"max_batch_size": 64, "max_wait_ms": 0}
    config = make_config([endpoint], request_timeout_seconds=0.5)
    with running_gateway(config) as url:
        models.GATE.clear()
        try:
            late = httpx.post(f"{url}/invocations", json=_body([5]), timeout=30)
        finally:
            models.GATE.set()
        assert late.status_code == 504
        assert late.json() == {
            "error_code": "DEADLINE_EXCEEDED",
            "message": "Prediction took longer than 0.5 seconds.",
        }
        # The stuck prediction finished in its thread and was discarded; the next one is served.
        assert httpx.post(f"{url}/invocations", json=_body([5])).json() == {"predictions": [51]}


def test_batching_answers_match_mlflow_bytes_for_the_demo_model(
    make_config: Callable[..., GatewayConfig],
) -> None:
    plain = make_config([{"name": "churn", "model": "churn", "variants": [{"alias": "champion"}]}])
    batched = make_config(
        [
            {
                "name": "churn",
                "model": "churn",
                "variants": [{"alias": "champion"}],
                "batching": {"max_batch_size": 32},
            }
        ]
    )
    bodies = [_body([n, n + 30, n + 60]) for n in range(1, 12)]
    with running_gateway(plain) as url:
        expected = [httpx.post(f"{url}/invocations", json=body).content for body in bodies]
    with running_gateway(batched) as url:
        results: list[bytes] = [b""] * len(bodies)

        def send(index: int) -> None:
            results[index] = httpx.post(f"{url}/invocations", json=bodies[index]).content

        threads = [threading.Thread(target=send, args=(n,)) for n in range(len(bodies))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert results == expected


def test_auto_batches_a_scikit_learn_model_and_leaves_a_custom_pyfunc_alone(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    config = make_config(
        [
            {"name": "churn", "model": "churn", "variants": [{"alias": "champion"}]},
            {"name": probe, "model": probe, "variants": [{"alias": "champion"}]},
        ]
    )
    with running_gateway(config) as url:
        before = scrape(url)
        for endpoint in ("churn", probe):
            response = httpx.post(f"{url}/endpoints/{endpoint}/invocations", json=_body([5]))
            assert response.status_code == 200
        after = scrape(url)
        described = {e["name"]: e["variants"][0] for e in httpx.get(f"{url}/endpoints").json()}
    assert described["churn"]["batching"] is True
    assert "scikit-learn predicts each row independently" in described["churn"]["batching_reason"]
    assert described[probe]["batching"] is False
    assert "custom python_function" in described[probe]["batching_reason"]
    batched = {
        endpoint: sample(after, "gateway_batch_rows_count", endpoint=endpoint)
        - sample(before, "gateway_batch_rows_count", endpoint=endpoint)
        for endpoint in ("churn", probe)
    }
    assert batched == {"churn": 1, probe: 0}
