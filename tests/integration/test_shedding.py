"""Load shedding on a real server: past max_in_flight a request is refused at once, and counted."""

from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
from tests.helpers import read_records, sample, scrape
from tests.integration import models
from tests.integration.conftest import running_gateway, wait_until

ADMITTED = 3
REFUSED = 5


@pytest.fixture(autouse=True)
def open_gate() -> Iterator[None]:
    yield
    models.GATE.set()


def _body(tenure: int) -> dict[str, object]:
    return {"dataframe_split": {"columns": list(FEATURES), "data": [[tenure, 50.0, 1, "basic"]]}}


def test_requests_past_max_in_flight_get_503_with_retry_after_while_the_others_are_served(
    make_config: Callable[..., GatewayConfig], tracking_uri: str, tmp_path: Path
) -> None:
    models.register("blocking", "champion", models.GatedModel(), tracking_uri)
    endpoint = {"name": "blocking", "model": "blocking", "variants": [{"alias": "champion"}]}
    config = make_config([endpoint], inference_log={"dir": str(tmp_path)}, max_in_flight=ADMITTED)
    url_of = "{}/endpoints/blocking/invocations".format

    def send(client: httpx.Client, url: str, request_id: str) -> httpx.Response:
        return client.post(url_of(url), json=_body(7), headers={"x-request-id": request_id})

    models.GATE.clear()  # every prediction blocks until the test opens the gate
    with (
        running_gateway(config) as url,
        httpx.Client(timeout=60) as client,
        ThreadPoolExecutor(ADMITTED + REFUSED) as threads,
    ):
        before = scrape(url)
        held = [threads.submit(send, client, url, f"held-{n}") for n in range(ADMITTED)]
        wait_until(
            lambda: (
                sample(scrape(url), "gateway_requests_in_flight", endpoint="blocking") == ADMITTED
            ),
            "the admitted requests to block in predict",
        )
        extra = [threads.submit(send, client, url, f"extra-{n}") for n in range(REFUSED)]
        # Answered while the gate is still closed: refused at once, never queued behind the others.
        refused = [future.result(timeout=30) for future in extra]
        assert not any(future.done() for future in held)
        models.GATE.set()
        served = [future.result(timeout=60) for future in held]
        after = scrape(url)

    assert [r.status_code for r in served] == [200] * ADMITTED
    for response in refused:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "max_in_flight" in response.json()["message"]
        assert "basic" not in response.text

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, endpoint="blocking", **labels) - sample(
            before, name, endpoint="blocking", **labels
        )

    assert delta("gateway_requests_total", status="503") == REFUSED
    assert delta("gateway_requests_total", status="200") == ADMITTED
    assert delta("gateway_shed_total", reason="in_flight") == REFUSED
    assert delta("gateway_shed_total", reason="queue_time") == 0
    records = read_records(tmp_path)
    assert Counter(r["request_id"] for r in records) == {
        **{f"held-{n}": 1 for n in range(ADMITTED)},
        **{f"extra-{n}": 1 for n in range(REFUSED)},
    }
    for record in records:
        if record["request_id"].startswith("extra-"):
            assert (record["status_code"], record["variant"], record["response"]) == (
                503,
                None,
                None,
            )
            assert "max_in_flight" in record["error"]
        else:
            assert (record["status_code"], record["variant"]) == (200, "champion")
