"""A canary gated on model quality: real gateway, real registry, outcomes arriving during the canary."""

import csv
import io
import json
import random
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gateway.commands import rollout as rollout_command
from gateway.commands.cli import _parser
from gateway.core.config import GatewayConfig
from gateway.core.rollout import AUDIT_TAG_PREFIX, WEIGHTS_TAG
from gateway.serving.registry import Registry
from tests.helpers import read_records
from tests.integration import models
from tests.integration.conftest import running_gateway, split_payload, wait_until

ROW: list[object] = [4, 89.5, 4, "basic"]
REQUESTS_PER_INTERVAL = 600


class Traffic:
    """Stands in for the canary's wait: sends requests, then writes the outcomes they led to."""

    def __init__(self, url: str, logs: Path, outcomes: Path, rates: dict[str, float]) -> None:
        self.url = url
        self.logs = logs
        self.outcomes = outcomes
        self.rates = rates
        self.sent = 0
        self.rng = random.Random(7)
        with outcomes.open("w", newline="") as file:
            csv.writer(file).writerow(["request_id", "outcome"])

    def __call__(self, seconds: float) -> None:
        wait_until(lambda: self._challenger_weight() > 0, "the canary's weights")
        rows = []
        with httpx.Client(timeout=30) as client:
            for _ in range(REQUESTS_PER_INTERVAL):
                self.sent += 1
                response = client.post(
                    f"{self.url}/invocations",
                    json=split_payload([ROW]),
                    headers={"x-user-id": f"user-{self.sent}"},
                )
                assert response.status_code == 200
                variant = response.headers["x-gateway-variant"]
                converted = self.rng.random() < self.rates[variant]
                rows.append([response.headers["x-request-id"], int(converted)])
        with self.outcomes.open("a", newline="") as file:
            csv.writer(file).writerows(rows)
        wait_until(lambda: len(read_records(self.logs)) >= self.sent, "the records on disk")

    def _challenger_weight(self) -> int:
        (endpoint,) = httpx.get(f"{self.url}/endpoints").json()
        return int(next(v["weight"] for v in endpoint["variants"] if v["variant"] == "challenger"))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "rates", "expected_status", "expected_text"),
    [
        (
            "quality-worse",
            {"champion": 0.5, "challenger": 0.2},
            rollout_command.EXIT_FAILED,
            "worse by more than the margin",
        ),
        (
            "quality-same",
            {"champion": 0.3, "challenger": 0.3},
            rollout_command.EXIT_OK,
            "no worse than the margin",
        ),
    ],
)
def test_the_canary_rolls_back_a_worse_challenger_and_promotes_a_non_inferior_one(
    tracking_uri: str,
    make_config: Callable[..., GatewayConfig],
    tmp_path: Path,
    name: str,
    rates: dict[str, float],
    expected_status: int,
    expected_text: str,
) -> None:
    models.register(name, "champion", models.ConstantModel(0), tracking_uri)
    challenger_version = models.register(name, "challenger", models.ConstantModel(1), tracking_uri)
    logs = tmp_path / "logs"
    config = make_config(
        [
            {
                "name": name,
                "model": name,
                "variants": [
                    {"alias": "champion", "weight": 100},
                    {"alias": "challenger", "weight": 0},
                ],
                "sticky": {"header": "X-User-Id"},
                "refresh_seconds": 0.5,
            }
        ],
        inference_log={"dir": str(logs)},
    )
    outcomes = tmp_path / "outcomes.csv"
    with running_gateway(config) as url:
        traffic = Traffic(url, logs, outcomes, rates)
        argv = ["rollout", "run", "--gateway", url, "--steps", "50", "--interval", "1"]
        argv += ["--min-requests", "20", "--max-p99-ratio", "50", "--max-holds", "4"]
        argv += ["--outcomes", str(outcomes), "--margin", "0.15"]
        out = io.StringIO()
        status = rollout_command.main(config, _parser({}).parse_args(argv), out, traffic)
    printed = out.getvalue()
    assert status == expected_status, printed
    assert expected_text in printed
    state = Registry(tracking_uri, None).model_state(name)
    trail = [
        json.loads(value)
        for key, value in sorted(state.tags.items())
        if key.startswith(AUDIT_TAG_PREFIX)
    ]
    judged = [entry for entry in trail if "quality" in entry.get("figures", {})]
    assert judged, trail
    assert judged[-1]["figures"]["quality"]["always_valid_interval"][0] is not None
    if expected_status == rollout_command.EXIT_OK:
        assert state.aliases["champion"] == challenger_version
    else:
        assert json.loads(state.tags[WEIGHTS_TAG]) == {"champion": 100, "challenger": 0}
        assert state.aliases["champion"] != challenger_version
