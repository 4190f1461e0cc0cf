"""What one client can make a worker hold: header size and count (431), read time (408), body
bytes and rows (413), the bodies held at once (503), and the memory of the largest request."""

import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.core.config import GatewayConfig
from tests.helpers import read_records, sample, scrape
from tests.integration.conftest import running_gateway, split_payload, wait_until
from tests.integration.test_cli import GatewayProcess

ROW: list[object] = [3, 89.5, 4, "basic"]
SECRET = "alice@example.com"


def _address(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _connect(url: str) -> socket.socket:
    sock = socket.create_connection(_address(url), timeout=30)
    sock.settimeout(30)
    return sock


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP response whole (the server closes or says its length)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body


def _closed(sock: socket.socket) -> bool:
    """Whether the server closed the connection (EOF, or a reset of what we still sent)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def _refused(url: str, *chunks: bytes) -> tuple[int, dict[str, str], dict[str, str]]:
    """Send `chunks` on a new connection; the status, headers and error of an answer that closes it."""
    with _connect(url) as sock:
        for chunk in chunks:
            sock.sendall(chunk)
        status, headers, body = _response(sock)
        assert _closed(sock)
    return status, headers, json.loads(body)


def _requests(url: str, status: int) -> float:
    return sample(scrape(url), "gateway_requests_total", status=str(status))


@pytest.fixture(scope="module")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("limits-log")


@pytest.fixture(scope="module")
def limited(make_config: Callable[..., GatewayConfig], log_dir: Path) -> Iterator[str]:
    config = make_config(
        inference_log={"dir": str(log_dir)},
        max_header_bytes=4096,
        max_headers=20,
        header_timeout_seconds=0.5,
        body_timeout_seconds=0.5,
        max_request_bytes=4096,
        max_in_flight_bytes=8192,
        max_request_rows=5,
    )
    with running_gateway(config) as url:
        yield url


def test_a_header_section_past_its_size_gets_431_before_it_is_all_sent(limited: str) -> None:
    before = _requests(limited, 431)
    status, headers, error = _refused(
        limited,
        b"POST /invocations HTTP/1.1\r\nhost: gateway\r\nx-big: " + b"a" * 3000,
        SECRET.encode() * 100,  # past 4 KiB, and the header never ends
    )
    assert status == 431
    assert headers["content-type"] == "application/json"
    assert error == {
        "error_code": "REQUEST_HEADER_FIELDS_TOO_LARGE",
        "message": "The request's headers exceed 4096 bytes.",
    }
    wait_until(lambda: _requests(limited, 431) == before + 1, "the 431 to be counted")


def test_too_many_header_fields_get_431_without_echo(limited: str) -> None:
    fields = b"".join(b"x-field-%d: %s\r\n" % (n, SECRET.encode()) for n in range(21))
    status, _, error = _refused(
        limited, b"GET /ping HTTP/1.1\r\nhost: gateway\r\n" + fields + b"\r\n"
    )
    assert status == 431
    assert error["message"] == "The request has more than 20 headers."
    assert SECRET not in json.dumps(error)


@pytest.mark.parametrize("sent", [b"", b"POST /invocations HTTP/1.1\r\nhost: gate"])
def test_headers_that_do_not_arrive_in_time_get_408_and_a_closed_connection(
    limited: str, sent: bytes
) -> None:
    status, _, error = _refused(limited, sent)
    assert status == 408
    assert error["error_code"] == "REQUEST_TIMEOUT"


def test_a_keep_alive_connection_gets_the_header_time_for_each_request(limited: str) -> None:
    # Each request's headers have their own time: a connection living longer is not cut.
    with httpx.Client() as client:
        for _ in range(3):
            response = client.post(f"{limited}/invocations", json=split_payload([ROW]))
            assert response.status_code == 200
            time.sleep(0.3)


def test_a_body_that_stalls_gets_408_and_its_record(limited: str, log_dir: Path) -> None:
    request_id = "stalled-body"
    status, headers, error = _refused(
        limited,
        b"POST /invocations HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"x-request-id: " + request_id.encode() + b'\r\ncontent-length: 100\r\n\r\n{"data',
    )
    assert status == 408
    assert headers["connection"] == "close"
    assert error == {
        "error_code": "REQUEST_TIMEOUT",
        "message": "The request's body took over 0.5 s to arrive.",
    }

    def recorded() -> list[dict[str, object]]:
        return [r for r in read_records(log_dir) if r["request_id"] == request_id]

    wait_until(lambda: bool(recorded()), "the record of the refused request")
    [record] = recorded()
    assert (record["status_code"], record["error"]) == (408, error["message"])


def test_a_slow_but_steady_body_within_its_time_is_served(limited: str) -> None:
    payload = json.dumps(split_payload([ROW])).encode()
    with _connect(limited) as sock:
        sock.sendall(
            b"POST /invocations HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % len(payload)
        )
        for start in range(0, len(payload), 40):
            sock.sendall(payload[start : start + 40])
            time.sleep(0.02)
        status, _, body = _response(sock)
    assert status == 200, body
    assert b"predictions" in body


def test_more_rows_than_allowed_get_413(limited: str) -> None:
    with httpx.Client() as client:
        ok = client.post(f"{limited}/invocations", json=split_payload([ROW] * 5))
        refused = client.post(f"{limited}/invocations", json=split_payload([ROW] * 6))
    assert ok.status_code == 200
    assert refused.status_code == 413
    assert refused.json() == {
        "error_code": "PAYLOAD_TOO_LARGE",
        "message": "The request has 6 rows; at most 5 are accepted.",
    }


def test_bodies_past_the_workers_budget_get_503_with_retry_after(limited: str) -> None:
    payload = json.dumps(split_payload([ROW])).encode().ljust(4000)
    head = (
        b"POST /invocations HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\n\r\n" % len(payload)
    )
    # Two bodies of 4,000 bytes on their way hold the worker's 8 KiB: a third must wait its turn.
    holders = [_connect(limited), _connect(limited)]
    refused: list[httpx.Response] = []

    def third_refused() -> bool:
        with httpx.Client() as client:
            response = client.post(
                f"{limited}/invocations",
                content=payload,
                headers={"content-type": "application/json"},
            )
        refused.append(response)
        return response.status_code == 503

    try:
        for sock in holders:
            sock.sendall(head + payload[:10])
        wait_until(third_refused, "the budget to be held by the two bodies")
        for sock in holders:
            sock.sendall(payload[10:])
        answers = [_response(sock)[0] for sock in holders]
    finally:
        for sock in holders:
            sock.close()
    assert refused[-1].headers["retry-after"] == "1"
    assert refused[-1].json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
    assert answers == [200, 200]
    with httpx.Client() as client:  # the budget is given back once they are answered
        again = client.post(
            f"{limited}/invocations", content=payload, headers={"content-type": "application/json"}
        )
    assert again.status_code == 200


def _peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) / 1024


def _padded_rows(rows: int, size: int) -> bytes:
    """`rows` rows in a dataframe_split body of exactly `size` bytes (JSON whitespace pads it)."""
    body = json.dumps(split_payload([ROW] * rows)).encode()
    assert len(body) <= size
    return body[:-1] + b" " * (size - len(body)) + body[-1:]


def _tiny_rows(size: int) -> bytes:
    """The most rows a body of `size` bytes can carry for the demo model: the costliest to parse."""
    row = b'[0,0,0,"pro"],'
    head = b'{"dataframe_split":{"columns":["tenure_months","monthly_charges","support_calls","plan"],"data":['
    count = (size - len(head) - 3) // len(row)
    return (head + row * count)[:-1] + b"]}}"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc")
def test_the_largest_requests_stay_within_the_documented_memory(
    make_config: Callable[..., GatewayConfig], tmp_path: Path
) -> None:
    """README: parsing makes a body at most 16 times its size; the default limits fit a worker."""
    config = make_config(inference_log={"dir": str(tmp_path / "logs")})
    limit = config.max_request_bytes
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0")
    try:
        url = gateway.url()
        wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, "the models")
        accepted = _padded_rows(config.max_request_rows, limit)
        refused = _tiny_rows(limit)
        for body, status in ((accepted, 200), (refused, 413)):
            Path(f"/proc/{gateway.process.pid}/clear_refs").write_text("5")
            before = _peak_rss_mib(gateway.process.pid)
            response = httpx.post(
                f"{url}/invocations",
                content=body,
                headers={"content-type": "application/json"},
                timeout=120,
            )
            assert response.status_code == status, response.text[:200]
            grown = _peak_rss_mib(gateway.process.pid) - before
            assert grown <= 16 * limit / 2**20, f"{len(body)} bytes peaked at +{grown:.0f} MiB"
    finally:
        gateway.process.kill()
        gateway.wait()
