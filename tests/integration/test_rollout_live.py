"""Canaries on real servers: aliases followed under load, weights from the registry, the guard."""

import argparse
import io
import json
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.commands import rollout as rollout_command
from gateway.core.config import GatewayConfig
from gateway.core.rollout import AUDIT_TAG_PREFIX, WEIGHTS_TAG
from gateway.serving.registry import Registry
from tests.integration import models
from tests.integration.conftest import (
    BackgroundLoad,
    running_gateway,
    split_payload,
    wait_healthy,
    wait_until,
)
from tests.integration.test_cli import GatewayProcess

REFRESH = 0.5
ROW: list[object] = [4, 89.5, 4, "basic"]


def _endpoint(model: str, **extra: object) -> dict[str, object]:
    return {
        "name": model,
        "model": model,
        "variants": [{"alias": "champion", "weight": 100}, {"alias": "challenger", "weight": 0}],
        "refresh_seconds": REFRESH,
        **extra,
    }


class Load(BackgroundLoad):
    """Bounded background load: keep-alive requests until stopped, every answer kept."""

    def __init__(
        self,
        url: str,
        path: str,
        clients: int = 2,
        limit: int = 20_000,
        rows: Callable[[int], list[object]] | None = None,
    ) -> None:
        self.answers: list[tuple[int, str | None, bytes]] = []
        super().__init__([partial(self._run, url + path, limit, rows) for _ in range(clients)])

    def _run(self, url: str, limit: int, rows: Callable[[int], list[object]] | None) -> None:
        with httpx.Client(timeout=30) as client:
            for n in range(limit):
                if self.stopped.is_set():
                    return
                row = rows(n) if rows else ROW
                response = client.post(url, json=split_payload([row]))
                self.answers.append(
                    (
                        response.status_code,
                        response.headers.get("x-gateway-model-version"),
                        response.content,
                    )
                )


@pytest.fixture(scope="module")
def swap_versions(tracking_uri: str) -> dict[str, int]:
    """Model `swap`: three champion versions and a challenger, each predicting its own marker."""
    markers = {}
    for marker in (101, 102, 103):
        version = models.register("swap", "champion", models.ConstantModel(marker), tracking_uri)
        markers[version] = marker
    Registry(tracking_uri, None).set_alias("swap", "champion", min(markers, key=int))
    challenger = models.register("swap", "challenger", models.ConstantModel(199), tracking_uri)
    return {**markers, challenger: 199}


@pytest.mark.slow
def test_moving_the_champion_alias_under_load_fails_no_request_and_every_header_tells_the_truth(
    tmp_path: Path,
    make_config: Callable[..., GatewayConfig],
    swap_versions: dict[str, int],
    tracking_uri: str,
) -> None:
    config = make_config([_endpoint("swap")])
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    registry = Registry(tracking_uri, None)
    order = sorted((v for v, marker in swap_versions.items() if marker != 199), key=int)
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", "--workers", "2")
    try:
        url = gateway.url()
        wait_healthy(url, "both workers")
        with Load(url, "/invocations", clients=4) as load:
            for version in [*order[1:], order[0], order[2], order[1]]:
                registry.set_alias("swap", "champion", version)
                mark = len(load.answers)

                # Swapped on both workers once 40 answers in a row come from the new version.
                def swapped(version: str = version, mark: int = mark) -> bool:
                    return len(load.answers) > mark + 40 and all(
                        answer[1] == version for answer in load.answers[-40:]
                    )

                wait_until(swapped, f"version {version} on both workers")
            started = time.monotonic()
            registry.set_tag("swap", WEIGHTS_TAG, '{"champion": 60, "challenger": 40}')
            wait_until(
                lambda: _weights_seen(url, 20) == {"champion": 60, "challenger": 40},
                "the new weights",
            )
            reached = time.monotonic() - started
        registry.set_tag("swap", WEIGHTS_TAG, '{"champion": 100, "challenger": 0}')
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait() == 0
    assert len(load.answers) > 200
    failed = [answer for answer in load.answers if answer[0] != 200]
    assert failed == []
    for _, answered, body in load.answers:
        assert answered is not None
        assert json.loads(body)["predictions"] == [swap_versions[answered]]
    print(
        f"\n{len(load.answers)} requests during 6 alias moves, 0 failed; weights reached both workers in {reached:.2f}s"
    )


def _weights_seen(url: str, samples: int) -> dict[str, int] | None:
    """The weights that `samples` fresh connections (spread over the workers) all report, if they agree."""
    seen = set()
    for _ in range(samples):
        (endpoint,) = httpx.get(f"{url}/endpoints").json()
        seen.add(
            json.dumps({v["variant"]: v["weight"] for v in endpoint["variants"]}, sort_keys=True)
        )
    return json.loads(seen.pop()) if len(seen) == 1 else None


def _rollout(config: GatewayConfig, url: str, command: str, **options: object) -> tuple[int, str]:
    defaults: dict[str, object] = {
        "rollout_command": command,
        "endpoint": None,
        "champion": "champion",
        "challenger": "challenger",
        "tracking_uri": None,
        "dry_run": False,
        "gateway": [url],
        "prometheus": None,
        "steps": (5, 25, 50, 100),
        "interval": 1.0,
        "min_requests": 20,
        "max_error_rate_increase": 0.01,
        "max_p99_ratio": 50.0,
        "max_holds": 5,
        "outcomes": [],
    }
    args = argparse.Namespace(**{**defaults, **options})
    out = io.StringIO()
    status = rollout_command.main(config, args, out=out)
    return status, out.getvalue()


@pytest.fixture
def canary(
    tracking_uri: str, make_config: Callable[..., GatewayConfig], request: pytest.FixtureRequest
) -> Iterator[tuple[GatewayConfig, str, str]]:
    """A gateway on its own model with a healthy champion and the challenger the test names."""
    name, challenger = request.param
    models.register(name, "champion", models.ConstantModel(0), tracking_uri)
    models.register(name, "challenger", challenger, tracking_uri)
    config = make_config([_endpoint(name)])
    with running_gateway(config) as url:
        yield config, url, name


@pytest.mark.slow
@pytest.mark.parametrize("canary", [("canary-flaky", models.FlakyModel())], indirect=True)
def test_a_failing_challenger_is_rolled_back_by_the_guard(
    canary: tuple[GatewayConfig, str, str], tracking_uri: str
) -> None:
    config, url, name = canary
    # Every third customer's tenure is divisible by 3: the challenger fails a third of its requests.
    with Load(url, "/invocations", clients=2, rows=lambda n: [n, 50.0, 1, "basic"]):
        status, printed = _rollout(config, url, "run")
        wait_until(
            lambda: _weights_seen(url, 5) == {"champion": 100, "challenger": 0},
            "all traffic back on the champion",
        )
    assert status == rollout_command.EXIT_FAILED
    assert "rollback: guard at step" in printed
    assert "error rate" in printed
    tags = Registry(tracking_uri, None).model_state(name).tags
    assert json.loads(tags[WEIGHTS_TAG]) == {"champion": 100, "challenger": 0}
    trail = [
        json.loads(value) for key, value in sorted(tags.items()) if key.startswith(AUDIT_TAG_PREFIX)
    ]
    assert [entry["action"] for entry in trail][-1] == "rollback"
    assert any(
        entry["action"].endswith("rollback") and entry["figures"]["challenger"]["error_rate"] > 0.1
        for entry in trail
    )


@pytest.mark.slow
@pytest.mark.parametrize("canary", [("canary-healthy", models.ConstantModel(0))], indirect=True)
def test_a_healthy_challenger_is_promoted_through_every_step(
    canary: tuple[GatewayConfig, str, str], tracking_uri: str
) -> None:
    config, url, name = canary
    registry = Registry(tracking_uri, None)
    challenger_version = registry.model_state(name).aliases["challenger"]
    # At 5% an interval must see `min_requests` challenger requests even on a busy 2-core machine,
    # where two clients got 9-18 in 2 s: four clients, 2.5 s intervals, 10 requests to judge.
    with Load(url, "/invocations", clients=4):
        status, printed = _rollout(config, url, "run", interval=2.5, min_requests=10)
    assert status == rollout_command.EXIT_OK, printed
    state = registry.model_state(name)
    assert state.aliases["champion"] == challenger_version
    assert json.loads(state.tags[WEIGHTS_TAG]) == {"champion": 100, "challenger": 0}
    actions = [
        json.loads(value)["action"]
        for key, value in sorted(state.tags.items())
        if key.startswith(AUDIT_TAG_PREFIX)
    ]
    assert [action for action in actions if action.endswith("advance")] == [
        f"step {s}%: advance" for s in (5, 25, 50, 100)
    ]
    assert actions[-1] == "promote"
