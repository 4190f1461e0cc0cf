"""Adaptive batching on a real server: merged predict calls, answers as if each request were alone."""

import re
import threading
import time
from collections.abc import Callable

import httpx
import pytest

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
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


def _queued(url: str) -> float:
    match = re.search(
        r'^gateway_batch_queue_depth\{[^}]*variant="champion"[^}]*\} (\S+)$',
        httpx.get(f"{url}/metrics").text,
        re.M,
    )
    return float(match.group(1)) if match else 0.0


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
        wait_until(lambda: _queued(url) == len(requests), "every request to queue behind it")
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


def test_a_request_whose_answer_cannot_be_encoded_fails_alone_in_its_batch(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    requests = {"a": [21, 22], "unencodable": [14], "b": [23]}
    with running_gateway(_config(make_config, probe)) as url:
        answers = _send_behind_a_held_batch(url, requests)
    # One merged call predicted every row; only the request with the unencodable answer failed.
    assert models.BATCH_CALLS == [1, 4]
    assert answers["unencodable"].status_code == 500
    assert answers["unencodable"].json()["error_code"] == "INTERNAL_ERROR"
    assert answers["a"].json() == {"predictions": [211, 222]}
    assert answers["b"].json() == {"predictions": [233]}


def _post_in_thread(url: str, tenure: int, answers: dict[int, httpx.Response]) -> threading.Thread:
    def send() -> None:
        answers[tenure] = httpx.post(f"{url}/invocations", json=_body([tenure]), timeout=60)

    thread = threading.Thread(target=send)
    thread.start()
    return thread


def test_under_load_a_batch_waits_until_it_is_as_large_as_the_last_one(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    with running_gateway(_config(make_config, probe, max_wait_ms=1_000)) as url:
        _send_behind_a_held_batch(url, {"a": [21], "b": [22], "c": [23]})
        # The last batch had three requests and was answered just now: the next request waits
        # for two more (at most 1 s) instead of going alone.
        answers: dict[int, httpx.Response] = {}
        alone = _post_in_thread(url, 24, answers)
        time.sleep(0.15)
        others = [_post_in_thread(url, tenure, answers) for tenure in (25, 26)]
        for thread in [alone, *others]:
            thread.join(60)
    assert models.BATCH_CALLS == [1, 3, 3]
    assert {t: answers[t].json() for t in answers} == {
        t: {"predictions": [t * 10 + t % 4]} for t in (24, 25, 26)
    }


def test_a_request_after_the_batcher_was_idle_longer_than_max_wait_ms_does_not_wait(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    with running_gateway(_config(make_config, probe, max_wait_ms=1_000)) as url:
        _send_behind_a_held_batch(url, {"a": [21], "b": [22], "c": [23]})
        time.sleep(1.2)
        started = time.monotonic()
        response = httpx.post(f"{url}/invocations", json=_body([27]), timeout=60)
        elapsed = time.monotonic() - started
    assert response.json() == {"predictions": [273]}
    assert models.BATCH_CALLS == [1, 3, 1]
    # Held for company it would have waited the whole second; alone it takes milliseconds.
    assert elapsed < 0.9


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


def test_a_request_alone_is_predicted_at_once(
    make_config: Callable[..., GatewayConfig], probe: str
) -> None:
    models.BATCH_CALLS.clear()
    with running_gateway(_config(make_config, probe)) as url:
        response = httpx.post(f"{url}/invocations", json=_body([5, 6]))
    assert response.json() == {"predictions": [51, 62]}
    assert models.BATCH_CALLS == [2]


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
