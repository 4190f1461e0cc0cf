"""Real fixtures: a sqlite MLflow registry with trained versions, and gateways on loopback."""

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Self

import httpx
import pytest
import uvicorn
import yaml

from gateway.commands.demo import FEATURES, MODEL_NAME, build_demo
from gateway.core.config import GatewayConfig
from gateway.core.config_file import parse_config
from gateway.http.app import create_app
from gateway.http.protocol import protocol_for
from gateway.http.server import bind
from gateway.observe.log_writer import InferenceLogWriter
from gateway.serving.registry import Registry
from gateway.serving.runtime import build_runtime

DEADLINE_SECONDS = 60.0


@pytest.fixture(scope="session")
def demo_config_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo registry (churn v1 @champion, v2 @challenger), built once per test session."""
    return build_demo(tmp_path_factory.mktemp("registry"))


@pytest.fixture(scope="session")
def tracking_uri(demo_config_path: Path) -> str:
    return str(yaml.safe_load(demo_config_path.read_text())["tracking_uri"])


@pytest.fixture(scope="session")
def make_config(
    tracking_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> Callable[..., GatewayConfig]:
    """A config on the test registry; `endpoints` defaults to the demo's churn endpoint."""
    log_dir = tmp_path_factory.mktemp("inference-logs")

    def make(endpoints: list[dict[str, object]] | None = None, **extra: object) -> GatewayConfig:
        document = {
            "tracking_uri": tracking_uri,
            "endpoints": endpoints
            or [
                {
                    "name": "churn",
                    "model": MODEL_NAME,
                    "variants": [
                        {"alias": "champion", "weight": 90},
                        {"alias": "challenger", "weight": 10},
                    ],
                    "sticky": {"header": "X-User-Id"},
                }
            ],
            "inference_log": {"dir": str(log_dir)},
            **extra,
        }
        return parse_config(yaml.safe_dump(document), {})

    return make


@contextlib.contextmanager
def running_gateway(
    config: GatewayConfig,
    *,
    wait_ready: bool = True,
    registry: Registry | None = None,
    log_writer: InferenceLogWriter | None = None,
) -> Iterator[str]:
    """A real uvicorn server on 127.0.0.1 in a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    runtime = build_runtime(config, registry=registry, log_writer=log_writer)
    protocol = protocol_for(config, runtime.service.refuse_on_arrival)
    server = uvicorn.Server(
        uvicorn.Config(create_app(runtime), http=protocol, log_config=None, access_log=False)
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: server.started, "the server to start")
        if wait_ready:
            wait_healthy(url)
        yield url
    finally:
        server.should_exit = True
        thread.join(DEADLINE_SECONDS)
        sock.close()


@pytest.fixture(scope="module")
def gateway_url(make_config: Callable[..., GatewayConfig]) -> Iterator[str]:
    """The demo endpoint served by a gateway shared by a test module."""
    with running_gateway(make_config()) as url:
        yield url


def wait_until(
    condition: Callable[[], bool], what: str, deadline: float = DEADLINE_SECONDS
) -> None:
    """Poll `condition` until it holds; fail the test naming `what` after `deadline` seconds."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        with contextlib.suppress(httpx.TransportError):
            if condition():
                return
        time.sleep(0.05)
    pytest.fail(f"timed out after {deadline:.0f}s waiting for {what}")


def wait_healthy(url: str, what: str = "the models to load") -> None:
    """Wait until the gateway at `url` answers /health with 200 (every worker loaded)."""
    wait_until(lambda: httpx.get(f"{url}/health").status_code == 200, what)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def split_payload(rows: list[list[object]]) -> dict[str, object]:
    return {"dataframe_split": {"columns": list(FEATURES), "data": rows}}


class BackgroundLoad:
    """Threads that send bounded load until the `with` block ends; each checks `stopped`."""

    def __init__(self, targets: list[Callable[[], None]]) -> None:
        self.stopped = threading.Event()
        self._threads = [threading.Thread(target=target, daemon=True) for target in targets]

    def __enter__(self) -> Self:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for thread in self._threads:
            thread.join(60)
