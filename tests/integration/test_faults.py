"""Faults injected into a running gateway: its sqlite registry replaced or gone, its log drained."""

import logging
import shutil
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.commands.demo import MODEL_NAME
from gateway.core.config import GatewayConfig
from tests.helpers import REPO, read_records, sample, scrape
from tests.integration.conftest import running_gateway, split_payload, wait_until

ROWS: list[list[object]] = [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"]]
ENDPOINT = "faulty"


@pytest.fixture
def registry_file(tracking_uri: str, tmp_path: Path) -> Path:
    """A copy of the test registry's sqlite file (churn v1 @champion, v2 @challenger)."""
    copy = tmp_path / "registry" / "mlflow.db"
    copy.parent.mkdir()
    shutil.copyfile(tracking_uri.removeprefix("sqlite:///"), copy)
    return copy


def _config(make_config: Callable[..., GatewayConfig], registry: Path) -> GatewayConfig:
    endpoint = {
        "name": ENDPOINT,
        "model": MODEL_NAME,
        "variants": [{"alias": "champion"}],
        "refresh_seconds": 0.1,
    }
    uri = f"sqlite:///{registry}"
    return make_config([endpoint], tracking_uri=uri, registry_uri=uri)


def _served_version(url: str) -> str:
    response = httpx.post(f"{url}/endpoints/{ENDPOINT}/invocations", json=split_payload(ROWS))
    assert response.status_code == 200, response.text
    return response.headers["x-gateway-model-version"]


def _failures(url: str, reason: str) -> float:
    return sample(
        scrape(url), "gateway_registry_refresh_failures_total", endpoint=ENDPOINT, reason=reason
    )


def _refresh_warnings(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.levelno == logging.WARNING and text in record.getMessage()
    ]


def test_a_replaced_sqlite_registry_file_is_followed(
    make_config: Callable[..., GatewayConfig], registry_file: Path, tmp_path: Path
) -> None:
    with running_gateway(_config(make_config, registry_file)) as url:
        assert _served_version(url) == "1"
        replacement = tmp_path / "replacement.db"
        shutil.copyfile(registry_file, replacement)
        database = sqlite3.connect(replacement)
        with database:
            database.execute(
                "UPDATE registered_model_aliases SET version = 2 WHERE name = ? AND alias = ?",
                (MODEL_NAME, "champion"),
            )
        database.close()
        replacement.replace(registry_file)

        wait_until(lambda: _served_version(url) == "2", "the champion of the new file to serve")
        assert _failures(url, "not_found") == 0


def test_a_registry_file_gone_is_a_counted_failure_logged_once_and_never_recreated(
    make_config: Callable[..., GatewayConfig],
    registry_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="gateway.serving.runtime")
    moved = tmp_path / "moved.db"
    with running_gateway(_config(make_config, registry_file)) as url:
        assert _failures(url, "not_found") == 0
        registry_file.rename(moved)

        wait_until(lambda: _failures(url, "not_found") >= 3, "three failed refreshes")
        assert not registry_file.exists()
        assert _served_version(url) == "1"
        failed = _refresh_warnings(caplog, f"refresh of endpoint {ENDPOINT} failed (not_found)")
        assert len(failed) == 1
        assert "is gone (moved or removed)" in failed[0]

        moved.rename(registry_file)
        wait_until(
            lambda: bool(_refresh_warnings(caplog, f"refresh of endpoint {ENDPOINT} recovered")),
            "the recovery to be logged",
        )
        assert _served_version(url) == "1"


def test_the_log_queue_gauge_reads_0_once_every_record_is_written(
    make_config: Callable[..., GatewayConfig], tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    config = make_config(inference_log={"dir": str(logs)})
    answered: list[int] = []
    stop = threading.Event()

    with running_gateway(config) as url:

        def send() -> None:
            with httpx.Client() as client:
                while not stop.is_set():
                    response = client.post(f"{url}/invocations", json=split_payload(ROWS))
                    answered.append(response.status_code)

        senders = [threading.Thread(target=send, daemon=True) for _ in range(4)]
        for sender in senders:
            sender.start()
        wait_until(lambda: len(answered) >= 200, "answers under load")
        stop.set()
        for sender in senders:
            sender.join(60)

        wait_until(lambda: len(read_records(logs)) == len(answered), "every record written")
        wait_until(
            lambda: sample(scrape(url), "gateway_inference_log_queue_depth") == 0,
            "the queue-depth gauge to read 0",
        )


def test_an_alert_watches_the_refresh_failures() -> None:
    rule = yaml.safe_load((REPO / "deploy" / "kubernetes" / "prometheusrule.yaml").read_text())
    alerts = {alert["alert"]: alert for group in rule["spec"]["groups"] for alert in group["rules"]}
    assert (
        "gateway_registry_refresh_failures_total" in alerts["GatewayRegistryRefreshFailing"]["expr"]
    )
