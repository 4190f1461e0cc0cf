"""A lone request of a fast model on the event loop, and a model that turns slow sent off it."""

import threading
from collections.abc import Callable, Iterator, Mapping

import httpx
import pytest

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
from tests.integration import models
from tests.integration.conftest import running_gateway, wait_until

# Requests sent at most to measure the model fast and see one predicted on the loop.
ENOUGH = 50
# Its bound: far above a fast call, far below a slow one, whatever the machine's load.
INLINE_MAX_MS = 100


@pytest.fixture(scope="module")
def switch(tracking_uri: str) -> str:
    models.register("switch", "champion", models.SwitchModel(), tracking_uri)
    return "switch"


@pytest.fixture
def fast_model() -> Iterator[None]:
    models.SWITCH["mode"] = "fast"
    models.SWITCH_THREADS.clear()
    models.SWITCH_HELD.clear()
    models.SWITCH_RELEASE.clear()
    yield
    models.SWITCH["mode"] = "fast"
    models.SWITCH_RELEASE.set()


def _body() -> dict[str, object]:
    return {"dataframe_split": {"columns": list(FEATURES), "data": [[5, 50.0, 1, "basic"]]}}


def _predicted_on_the_loop(url: str) -> bool:
    """Send one request; whether the model was called on the server's loop thread."""
    calls = len(models.SWITCH_THREADS)
    response = httpx.post(f"{url}/endpoints/switch/invocations", json=_body(), timeout=60)
    assert response.status_code == 200
    return not models.SWITCH_THREADS[calls].startswith("gateway-predict")


def _config(
    make_config: Callable[..., GatewayConfig], switch: str, batching: Mapping[str, float]
) -> GatewayConfig:
    """The switch model's endpoint with `batching`, beside the demo's churn endpoint."""
    return make_config(
        [
            {
                "name": switch,
                "model": switch,
                "variants": [{"alias": "champion"}],
                "batching": batching,
            },
            {"name": "churn", "model": "churn", "variants": [{"alias": "champion"}]},
        ]
    )


def test_a_model_that_turns_slow_leaves_the_loop_and_never_stalls_other_requests(
    make_config: Callable[..., GatewayConfig], switch: str, fast_model: None
) -> None:
    batching = {"max_batch_size": 8, "max_wait_ms": 0, "inline_max_ms": INLINE_MAX_MS}
    config = _config(make_config, switch, batching)
    with running_gateway(config) as url:
        # Measured fast in worker threads first, then a lone request is predicted on the loop.
        assert not _predicted_on_the_loop(url)
        assert any(_predicted_on_the_loop(url) for _ in range(ENOUGH))
        # The model turns slow: the one call that shows it ran on the loop; it is demoted.
        models.SWITCH["mode"] = "sleep"
        assert _predicted_on_the_loop(url)
        # Now slow calls run in a worker thread: while one is held, another endpoint answers.
        models.SWITCH["mode"] = "hold"
        held: dict[str, httpx.Response] = {}

        def send() -> None:
            held["slow"] = httpx.post(
                f"{url}/endpoints/switch/invocations", json=_body(), timeout=60
            )

        thread = threading.Thread(target=send)
        thread.start()
        try:
            wait_until(models.SWITCH_HELD.is_set, "the slow request to reach the model")
            assert models.SWITCH_THREADS[-1].startswith("gateway-predict")
            other = httpx.post(f"{url}/endpoints/churn/invocations", json=_body(), timeout=60)
            assert other.status_code == 200
            assert "slow" not in held  # answered while the slow request is still predicting
        finally:
            models.SWITCH_RELEASE.set()
            thread.join(60)
        assert held["slow"].status_code == 200


def test_a_model_measured_slow_never_runs_on_the_loop_nor_stalls_other_requests(
    make_config: Callable[..., GatewayConfig], switch: str, fast_model: None
) -> None:
    # A version measured slow from its first calls: always a worker thread, never the loop.
    batching = {"max_batch_size": 8, "max_wait_ms": 0}
    config = _config(make_config, switch, batching)
    models.SWITCH["mode"] = "sleep"
    with running_gateway(config) as url:
        for _ in range(3):
            assert not _predicted_on_the_loop(url)
        models.SWITCH["mode"] = "hold"
        held: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: held.update(
                slow=httpx.post(f"{url}/endpoints/switch/invocations", json=_body(), timeout=60)
            )
        )
        thread.start()
        try:
            wait_until(models.SWITCH_HELD.is_set, "the slow request to reach the model")
            other = httpx.post(f"{url}/endpoints/churn/invocations", json=_body(), timeout=60)
            assert other.status_code == 200
            assert "slow" not in held
        finally:
            models.SWITCH_RELEASE.set()
            thread.join(60)
        assert held["slow"].status_code == 200
        assert all(name.startswith("gateway-predict") for name in models.SWITCH_THREADS)
