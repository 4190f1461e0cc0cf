"""`gateway report` on the logs of a real gateway: a 50/50 sticky split, real models, real records.

2,500 requests from 2,000 users (500 of them come back) go through a gateway on loopback; the
outcomes are made up afterwards from each response's `x-request-id` and `x-gateway-variant`,
with a seeded generator: the report must find a real effect, find none where there is none, and
refuse to compare when a fifth of one variant's users (and so of its records) are missing from the
logs. With about 1,000 users a variant, dropping a fifth of one variant's users gives an expected
chi-square of about 22, past the p < 0.001 alarm (10.8); the sample-ratio unit is the user here,
since the split is sticky by user.
"""

import json
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from gateway.commands.cli import main
from gateway.commands.demo import FEATURES, MODEL_NAME, synthetic_customers
from gateway.core.config import GatewayConfig
from tests.integration.conftest import running_gateway

SECRET = "a-secret-of-the-report-test"
USERS = 2_000
REQUESTS = 2_500
THREADS = 8


@dataclass(frozen=True)
class Answer:
    """What the gateway said to one request."""

    request_id: str
    variant: str
    user: str


@dataclass(frozen=True)
class Served:
    """The inference-log directory of the run and every answer."""

    logs: Path
    answers: list[Answer]


@pytest.fixture(scope="module")
def served(
    make_config: Callable[..., GatewayConfig], tmp_path_factory: pytest.TempPathFactory
) -> Served:
    logs = tmp_path_factory.mktemp("report-logs")
    endpoint = {
        "name": "churn",
        "model": MODEL_NAME,
        "variants": [{"alias": "champion", "weight": 50}, {"alias": "challenger", "weight": 50}],
        "sticky": {"header": "X-User-Id"},
        "batching": {"max_batch_size": 16, "max_wait_ms": 2},
    }
    config = make_config([endpoint], inference_log={"dir": str(logs), "user_key_secret": SECRET})
    frame, _ = synthetic_customers(REQUESTS, seed=5)
    rows = frame.to_numpy().tolist()
    answers: list[Answer | None] = [None] * REQUESTS

    def send(url: str, indexes: range) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            for n in indexes:
                user = f"user-{n % USERS}"
                body = {"dataframe_split": {"columns": list(FEATURES), "data": [rows[n]]}}
                response = client.post("/invocations", json=body, headers={"X-User-Id": user})
                assert response.status_code == 200, response.text
                answers[n] = Answer(
                    response.headers["x-request-id"], response.headers["x-gateway-variant"], user
                )

    with running_gateway(config) as url:
        threads = [
            threading.Thread(target=send, args=(url, range(t, REQUESTS, THREADS)))
            for t in range(THREADS)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(answer is not None for answer in answers)
    return Served(logs, [answer for answer in answers if answer is not None])


def outcomes(served: Served, path: Path, rates: dict[str, float], seed: int) -> Path:
    """An outcomes CSV keyed by x-request-id: each request converts at its variant's rate."""
    rng = np.random.default_rng(seed)
    lines = ["request_id,outcome"]
    for answer in served.answers:
        lines.append(f"{answer.request_id},{int(rng.uniform() < rates[answer.variant])}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def report(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    assert main(["report", *argv, "--json"], environ={}) == 0
    document: dict[str, object] = json.loads(capsys.readouterr().out)
    return document


def test_a_challenger_that_converts_twice_as_often_is_promoted(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = outcomes(served, tmp_path / "o.csv", {"champion": 0.10, "challenger": 0.20}, seed=1)
    found = report(capsys, "--logs", str(served.logs), "--outcomes", str(path))
    assert found["records"] == REQUESTS
    assert found["srm"]["healthy"] is True
    variants = found["variants"]
    assert sum(v["requests"] for v in variants.values()) == REQUESTS
    assert sum(v["users"] for v in variants.values()) == USERS
    (comparison,) = found["comparisons"]
    assert comparison["unit"] == "user"
    assert comparison["ci"][0] < 0.10 < comparison["ci"][1]
    assert found["verdict"]["decision"] == "promote"


def test_without_an_effect_the_champion_stays(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = outcomes(served, tmp_path / "o.csv", {"champion": 0.15, "challenger": 0.15}, seed=2)
    found = report(capsys, "--logs", str(served.logs), "--outcomes", str(path))
    assert found["verdict"]["decision"] in ("inconclusive", "keep_champion")


def test_a_fifth_of_one_variants_users_missing_makes_the_split_unhealthy(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = np.random.default_rng(3)
    users = {
        name: sorted({a.user for a in served.answers if a.variant == name})
        for name in ("champion", "challenger")
    }
    # From the variant with fewer users: the hash's own imbalance then adds to the loss.
    smaller = min(users.values(), key=len)
    dropped = set(rng.choice(smaller, len(smaller) // 5, replace=False).tolist())
    lost = {a.request_id for a in served.answers if a.user in dropped}
    damaged = tmp_path / "logs"
    damaged.mkdir()
    for file in served.logs.glob("*.jsonl"):
        kept = [
            line
            for line in file.read_text(encoding="utf-8").splitlines()
            if json.loads(line)["request_id"] not in lost
        ]
        (damaged / file.name).write_text("\n".join(kept) + "\n", encoding="utf-8")
    path = outcomes(served, tmp_path / "o.csv", {"champion": 0.10, "challenger": 0.20}, seed=1)
    found = report(capsys, "--logs", str(damaged), "--outcomes", str(path))
    assert found["srm"]["healthy"] is False
    assert found["srm"]["p_value"] < 0.001
    assert found["verdict"]["decision"] == "split_unhealthy"


def test_the_html_report_is_one_file_that_headless_chromium_renders(
    served: Served, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = outcomes(served, tmp_path / "o.csv", {"champion": 0.10, "challenger": 0.20}, seed=1)
    page = tmp_path / "report.html"
    report(capsys, "--logs", str(served.logs), "--outcomes", str(path), "--html", str(page))
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".html"] == ["report.html"]
    assert "<svg" in page.read_text(encoding="utf-8")
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed: the page was checked as text only")
    screenshot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            f"--screenshot={screenshot}",
            "--window-size=1200,2000",
            page.as_uri(),
        ],
        capture_output=True,
        check=True,
        timeout=120,
    )
    assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert screenshot.stat().st_size > 20_000  # a blank 1200x2000 page is a few kilobytes
