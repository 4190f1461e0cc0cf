"""Inference logs and metrics of a real gateway: complete, exact, and cheap for the request path."""

import json
import re
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.core.config import GatewayConfig
from gateway.core.record import user_key_hash
from gateway.observe import metrics
from gateway.observe.log_writer import InferenceLogWriter
from tests.integration.conftest import running_gateway, split_payload, wait_healthy, wait_until
from tests.integration.test_cli import GatewayProcess
from tests.integration.test_inference_log import GatedFile

SECRET = "a-secret-of-the-deployment"
ROW: list[object] = [3, 89.5, 4, "basic"]
GOOD = json.dumps(split_payload([ROW])).encode()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics as {(name, labels): value}."""
    samples = {}
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        if match is None or line.startswith("#"):
            continue
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
        samples[(match.group(1), labels)] = float(match.group(3))
    return samples


def requests_by(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> Counter[tuple[str, str, str]]:
    counts: Counter[tuple[str, str, str]] = Counter()
    for (name, labels), value in samples.items():
        if name == "gateway_requests_total":
            label = dict(labels)
            counts[(label["variant"], label["model_version"], label["status"])] += int(value)
    return counts


@pytest.mark.slow
def test_two_workers_log_every_request_once_and_count_it_exactly(
    tmp_path: Path, make_config: Callable[..., GatewayConfig]
) -> None:
    log_dir = tmp_path / "logs"
    config = make_config(inference_log={"dir": str(log_dir), "user_key_secret": SECRET})
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", "--workers", "2")
    try:
        url = gateway.url()
        wait_healthy(url, "both workers")
        sent: dict[str, tuple[str | None, str | None, int, str | None]] = {}
        expected: Counter[tuple[str, str, str]] = Counter()
        mix = [
            *[({"X-User-Id": f"user-{n}"}, GOOD, "application/json") for n in range(60)],
            *[({"x-gateway-variant": "challenger"}, GOOD, "application/json") for _ in range(10)],
            *[({}, b"{not json", "application/json") for _ in range(7)],
            *[({"X-User-Id": "user-1"}, GOOD, "text/plain") for _ in range(5)],
        ]
        for n, (headers, body, content_type) in enumerate(mix):
            request_id = f"req-{n}"
            # A connection per request: the kernel spreads them over both workers.
            response = httpx.post(
                f"{url}/invocations",
                content=body,
                headers={**headers, "Content-Type": content_type, "x-request-id": request_id},
            )
            variant = response.headers.get("x-gateway-variant")
            version = response.headers.get("x-gateway-model-version")
            routing = (
                "forced"
                if "x-gateway-variant" in headers
                else "sticky"
                if "X-User-Id" in headers
                else "random"
            )
            sent[request_id] = (
                variant,
                version,
                response.status_code,
                None if response.status_code == 415 else routing,
            )
            expected[(variant or "_none", version or "_none", str(response.status_code))] += 1
        # The scrape's worker counts its own requests at once; the other's within FLUSH_SECONDS.
        wait_until(
            lambda: requests_by(scrape(url)) == expected,
            "both workers' counts",
            deadline=metrics.FLUSH_SECONDS * 20,
        )
        assert {status for _, _, status in expected} == {"200", "400", "415"}
        assert {variant for variant, _, _ in expected} >= {"champion", "challenger"}
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait() == 0

    records = [
        json.loads(line)
        for file in sorted(log_dir.glob("*.jsonl"))
        for line in file.read_text().splitlines()
    ]
    assert (
        len({re.sub(r"-\d{4}\.jsonl$", "", f.name) for f in log_dir.glob("*.jsonl")}) == 2
    )  # one writer a worker
    assert Counter(record["request_id"] for record in records) == Counter(list(sent))
    for record in records:
        variant, version, status, sent_routing = sent[record["request_id"]]
        assert (
            record["variant"],
            record["model_version"],
            record["status_code"],
            record["routing"],
        ) == (
            variant,
            version,
            status,
            sent_routing,
        )
        if status == 200:
            assert json.loads(record["response"])["predictions"] in ([0], [1])
        else:
            assert record["error"]
    sticky = next(record for record in records if record["request_id"] == "req-1")
    assert sticky["user_key_hash"] == user_key_hash("user-1", SECRET.encode())


def test_a_stalled_log_writer_drops_and_counts_records_while_requests_are_served(
    tmp_path: Path, make_config: Callable[..., GatewayConfig]
) -> None:
    gate, entered = threading.Event(), threading.Event()
    writer = InferenceLogWriter(
        tmp_path / "logs",
        max_queue=3,
        opener=lambda path: GatedFile(path, gate, entered),
        on_drop=metrics.count_log_drop,
        linger_seconds=0,  # the first record alone is taken into the stalled write
    )
    with running_gateway(make_config(), log_writer=writer) as url:
        before = scrape(url).get(
            ("gateway_inference_log_dropped_total", frozenset({("reason", "queue_full")})), 0.0
        )
        statuses = [
            httpx.post(
                f"{url}/invocations", content=GOOD, headers={"Content-Type": "application/json"}
            ).status_code
            for _ in range(20)
        ]
        assert statuses == [200] * 20
        assert entered.wait(10)
        after = scrape(url)[
            ("gateway_inference_log_dropped_total", frozenset({("reason", "queue_full")}))
        ]
        # The writer holds one record in its stalled write and three wait in the queue.
        assert after - before == writer.dropped == 20 - 4
        gate.set()
    assert writer.written == 4


def test_failure_counters_that_alerts_watch_are_exported_before_the_first_failure(
    make_config: Callable[..., GatewayConfig],
) -> None:
    # Prometheus sees no increase() in a counter series that first appears at 1: the alerts on
    # load failures and lost records need their series present, at 0, from the start.
    variants = [{"alias": "champion", "weight": 1}, {"alias": "challenger", "weight": 1}]
    endpoint = {"name": "counted-from-zero", "model": "churn", "variants": variants}
    with running_gateway(make_config([endpoint])) as url:
        wanted = [
            ("gateway_model_load_failures_total", {"endpoint": endpoint["name"], "variant": name})
            for name in ("champion", "challenger")
        ] + [
            ("gateway_inference_log_dropped_total", {"reason": reason})
            for reason in ("queue_full", "write_error")
        ]
        wait_until(
            lambda: all(
                (name, frozenset(labels.items())) in scrape(url) for name, labels in wanted
            ),
            "the failure counters",
        )
