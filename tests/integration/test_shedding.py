"""Load shedding on a real server: past max_in_flight a request is refused at once, and counted."""

import json
import socket
import time
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

    def send_chunked(client: httpx.Client, url: str, request_id: str) -> httpx.Response:
        # A body of unknown length: the connection cannot skip it, so the app reads and sheds.
        body = json.dumps(_body(7)).encode()
        return client.post(
            url_of(url),
            content=iter([body[:10], body[10:]]),
            headers={"x-request-id": request_id, "content-type": "application/json"},
        )

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
        extra = [threads.submit(send, client, url, f"extra-{n}") for n in range(REFUSED - 1)]
        extra.append(threads.submit(send_chunked, client, url, "extra-chunked"))
        # Answered while the gate is still closed: refused at once, never queued behind the others.
        refused = [future.result(timeout=30) for future in extra]
        closing = _refused_and_closed(url, url_of(url).removeprefix(url))
        assert not any(future.done() for future in held)
        models.GATE.set()
        served = [future.result(timeout=60) for future in held]
        # The connections that were refused on arrival serve the next request as usual.
        again = [send(client, url, f"again-{n}") for n in range(REFUSED)]
        after = scrape(url)

    assert [r.status_code for r in served + again] == [200] * (ADMITTED + REFUSED)
    for response in refused:
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.headers["x-request-id"].startswith("extra-")
        assert response.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "max_in_flight" in response.json()["message"]
        assert "basic" not in response.text

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, endpoint="blocking", **labels) - sample(
            before, name, endpoint="blocking", **labels
        )

    assert closing.startswith(b"HTTP/1.1 503 ")
    assert b"\r\nconnection: close\r\n" in closing
    assert delta("gateway_requests_total", status="503") == REFUSED + 1
    assert delta("gateway_requests_total", status="200") == ADMITTED + REFUSED
    assert delta("gateway_shed_total", reason="in_flight") == REFUSED + 1
    assert delta("gateway_shed_total", reason="queue_time") == 0
    # Requests refused on arrival were never read: no record. The one the app read and refused
    # (its body's length unknown) has its record, as every request the app reads does.
    records = read_records(tmp_path)
    assert Counter(r["request_id"] for r in records) == {
        **{f"held-{n}": 1 for n in range(ADMITTED)},
        **{f"again-{n}": 1 for n in range(REFUSED)},
        "extra-chunked": 1,
    }
    for record in records:
        if record["request_id"] == "extra-chunked":
            assert (record["status_code"], record["variant"], record["response"]) == (
                503,
                None,
                None,
            )
            assert "max_in_flight" in record["error"]
        else:
            assert (record["status_code"], record["variant"]) == (200, "champion")


def _refused_and_closed(url: str, path: str) -> bytes:
    """A request that asks to close its connection: all the server sends before it closes."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(_body(7)).encode()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        received = b""
        while chunk := sock.recv(65536):  # until the server closes the connection
            received += chunk
    return received


def test_a_worker_whose_queue_sheds_admits_two_full_batches_until_a_quiet_second_has_passed(
    make_config: Callable[..., GatewayConfig], tracking_uri: str, tmp_path: Path
) -> None:
    models.register("overloaded", "champion", models.GatedModel(), tracking_uri)
    endpoint = {
        "name": "overloaded",
        "model": "overloaded",
        "variants": [{"alias": "champion"}],
        "batching": {"max_batch_size": 2, "max_wait_ms": 0},
    }
    # Requests are shed for their wait by max_queue_ms alone: the standing-queue limit would
    # also shed a backlog left by the gate once a fast batch follows it.
    config = make_config(
        [endpoint],
        inference_log={"dir": str(tmp_path)},
        max_in_flight=20,
        max_queue_ms=1500,
        standing_queue_ms=None,
    )
    url_of = "{}/endpoints/overloaded/invocations".format

    def send(client: httpx.Client, url: str, request_id: str) -> httpx.Response:
        return client.post(url_of(url), json=_body(7), headers={"x-request-id": request_id})

    def gauges(url: str) -> tuple[float, float]:
        metrics = scrape(url)
        return (
            sample(metrics, "gateway_in_flight_limit"),
            sample(metrics, "gateway_requests_in_flight", endpoint="overloaded"),
        )

    def blocked(url: str, count: int, limit: int) -> Callable[[], bool]:
        return lambda: gauges(url) == (limit, count)

    with (
        running_gateway(config) as url,
        httpx.Client(timeout=60) as client,
        ThreadPoolExecutor(8) as threads,
    ):
        assert gauges(url) == (20, 0)
        # A backlog: one request predicting behind a closed gate, five queued behind it for
        # longer than max_queue_ms. When the gate opens, the five are shed for their wait.
        # (The in-flight gauge is written twice a second: the waits below allow for it.)
        models.GATE.clear()
        first = threads.submit(send, client, url, "first")
        wait_until(blocked(url, 1, 20), "the first request to block in predict")
        backlog = [threads.submit(send, client, url, f"backlog-{n}") for n in range(5)]
        wait_until(blocked(url, 6, 20), "the backlog to queue")
        time.sleep(1.6)
        models.GATE.set()
        assert first.result(timeout=60).status_code == 200
        shed = [future.result(timeout=60) for future in backlog]
        # The worker now admits two full batches (4), not max_in_flight (20).
        wait_until(blocked(url, 0, 4), "the lowered limit, and nothing in flight")
        models.GATE.clear()
        held = [threads.submit(send, client, url, f"held-{n}") for n in range(4)]
        wait_until(blocked(url, 4, 4), "four requests to be admitted")
        refused = send(client, url, "refused")
        models.GATE.set()
        assert [future.result(timeout=60).status_code for future in held] == [200] * 4
        # A second without a refusal: the first request after it restores max_in_flight.
        time.sleep(1.1)
        assert send(client, url, "after").status_code == 200
        wait_until(blocked(url, 0, 20), "max_in_flight again, and nothing in flight")
        models.GATE.clear()
        again = [threads.submit(send, client, url, f"again-{n}") for n in range(6)]
        wait_until(blocked(url, 6, 20), "six requests to be admitted again")
        models.GATE.set()
        answers = [future.result(timeout=60) for future in again]
        assert [answer.status_code for answer in answers] == [200] * 6, [a.text for a in answers]

    for response in shed:
        assert response.status_code == 503
        assert "(max_queue_ms)" in response.json()["message"]
    assert (refused.status_code, refused.headers["retry-after"]) == (503, "1")
    assert refused.json() == {
        "error_code": "TEMPORARILY_UNAVAILABLE",
        "message": "The gateway is overloaded: this worker is answering 4 requests already "
        "(max_in_flight, lowered while its queue sheds). Retry later.",
    }
