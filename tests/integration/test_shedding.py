"""Load shedding on a real server: past max_in_flight a request is refused at once, and counted."""

import json
import socket
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
