"""The `gateway` command as ops run it: start-up errors, `--workers 2`, and a graceful stop."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from gateway.commands.cli import main
from gateway.core.config import GatewayConfig
from tests.integration.conftest import free_port, split_payload, wait_healthy, wait_until

pytestmark = pytest.mark.slow

ROWS: list[list[object]] = [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"]]


class GatewayProcess:
    """`python -m gateway ...` as a subprocess, its stderr collected as it comes."""

    def __init__(self, *args: str, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**_inherited(), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", **(env or {})},
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self) -> str:
        found: list[str] = []

        def listening() -> bool:
            found.extend(re.findall(r"listening on (http://\S+)", self.output))
            return bool(found) or self.process.poll() is not None

        wait_until(listening, "the gateway to listen")
        assert found, self.output
        return found[0]

    def wait(self, timeout: float = 120) -> int:
        code = self.process.wait(timeout)
        # Workers that outlive their supervisor for a moment keep the pipe open; closing it under
        # the reader would block, so it is closed only once the reader has seen its end.
        self._reader.join(30)
        assert self.process.stdout is not None
        if not self._reader.is_alive():
            self.process.stdout.close()
        return code


def _inherited() -> dict[str, str]:
    """This process's environment without the registry URIs that MLflow exported into it."""
    leaked = {"MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"}
    return {key: value for key, value in os.environ.items() if key not in leaked}


@pytest.fixture
def write_config(tmp_path: Path, make_config: Callable[..., GatewayConfig]) -> Callable[..., Path]:
    def write(endpoints: list[dict[str, object]] | None = None, **extra: object) -> Path:
        config = make_config(endpoints, **extra)
        path = tmp_path / "gateway.yaml"
        path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
        return path

    return write


@pytest.fixture
def served() -> Iterator[list[GatewayProcess]]:
    processes: list[GatewayProcess] = []
    yield processes
    for gateway in processes:
        if gateway.process.poll() is None:
            gateway.process.kill()
            gateway.wait()


def _two_workers(
    write_config: Callable[..., Path], served: list[GatewayProcess]
) -> tuple[GatewayProcess, str]:
    """`gateway serve --workers 2` on the test config, once both workers' models are loaded."""
    gateway = GatewayProcess(
        "serve", "--config", str(write_config()), "--port", "0", "--workers", "2"
    )
    served.append(gateway)
    url = gateway.url()
    wait_healthy(url, "both workers' models")
    return gateway, url


def test_bad_config_exits_2_listing_every_problem_before_binding(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "endpoints:\n  - name: churn\n    modle: churn\n    variants: [{alias: champion, weight: -5}]\n"
    )
    port = free_port()
    gateway = GatewayProcess("serve", "--config", str(path), "--port", str(port))
    assert gateway.wait() == 2
    assert "endpoints[0].model: required" in gateway.output
    assert "endpoints[0].variants[0].weight: must be a number >= 0, got -5" in gateway.output
    assert "endpoints[0].modle: unknown key (did you mean `model`?)" in gateway.output
    assert "listening" not in gateway.output


@pytest.mark.parametrize(
    ("variants", "model", "expected"),
    [
        (
            [{"alias": "champion"}, {"alias": "canary"}],
            "churn",
            "variant canary: models:/churn@canary",
        ),
        ([{"version": 99}], "churn", "variant v99: models:/churn/99"),
        (
            [{"alias": "champion"}],
            "no-such-model",
            "variant champion: models:/no-such-model@champion",
        ),
    ],
)
def test_a_missing_alias_version_or_model_exits_1_naming_it(
    write_config: Callable[..., Path], variants: list[dict[str, object]], model: str, expected: str
) -> None:
    path = write_config([{"name": "churn", "model": model, "variants": variants}])
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0")
    assert gateway.wait() == 1
    assert f"error: endpoint churn {expected}" in gateway.output
    assert "(registry sqlite:///" in gateway.output
    assert "listening" not in gateway.output


def test_an_unreachable_registry_is_retried_visibly_then_exits_1_at_the_deadline(
    write_config: Callable[..., Path],
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    path = write_config(tracking_uri=uri, startup_deadline_seconds=3)
    # MLflow's own retries left to the gateway's defaults, as a user who sets none has them.
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "", "MLFLOW_HTTP_REQUEST_TIMEOUT": ""}
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", env=env)
    assert gateway.wait(timeout=120) == 1
    assert f"registry {uri} unreachable (attempt 1, giving up in" in gateway.output
    assert (
        f"endpoint churn variant champion: models:/churn@champion (registry {uri}): "
        in gateway.output
    )
    assert "Connection refused" in gateway.output
    assert (
        f"error: the registry {uri} was unreachable for startup_deadline_seconds (3 s, "
        in gateway.output
    )
    assert "listening" not in gateway.output


def test_check_reports_an_unreachable_registry_without_mlflows_minutes_of_retries(
    write_config: Callable[..., Path],
) -> None:
    uri = f"http://127.0.0.1:{free_port()}"
    env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "", "MLFLOW_HTTP_REQUEST_TIMEOUT": ""}
    gateway = GatewayProcess("check", "--config", str(write_config(tracking_uri=uri)), env=env)
    # MLflow's own defaults (7 retries, growing pauses) would take minutes.
    assert gateway.wait(timeout=60) == 1
    assert f"error: endpoint churn variant champion: models:/churn@champion (registry {uri})" in (
        gateway.output
    )


def test_check_prints_what_each_variant_resolves_to(write_config: Callable[..., Path]) -> None:
    gateway = GatewayProcess("check", "--config", str(write_config()))
    assert gateway.wait() == 0
    assert "churn\tchampion\tmodels:/churn/1\tweight 90" in gateway.output
    assert "churn\tchallenger\tmodels:/churn/2\tweight 10" in gateway.output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_model_that_cannot_be_loaded_stops_the_gateway_with_the_reason(
    write_config: Callable[..., Path], workers: str
) -> None:
    env = {"MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    gateway = GatewayProcess(
        "serve", "--config", str(write_config()), "--port", "0", "--workers", workers, env=env
    )
    assert gateway.wait() != 0
    assert "cannot serve: models:/churn/1" in gateway.output
    assert "MLFLOW_ALLOW_PICKLE_DESERIALIZATION" in gateway.output


def test_two_workers_serve_correct_predictions_and_stop_gracefully(
    write_config: Callable[..., Path], served: list[GatewayProcess]
) -> None:
    gateway, url = _two_workers(write_config, served)
    expected: dict[str, bytes] = {}
    with httpx.Client() as client:
        for version, variant in (("1", "champion"), ("2", "challenger")):
            response = client.post(
                f"{url}/invocations",
                json=split_payload(ROWS),
                headers={"x-gateway-variant": variant},
            )
            assert response.headers["x-gateway-model-version"] == version
            expected[variant] = response.content
    # New connections land on either worker; every answer is the forced variant's.
    for n in range(40):
        variant = ("champion", "challenger")[n % 2]
        with httpx.Client() as client:
            response = client.post(
                f"{url}/invocations",
                json=split_payload(ROWS),
                headers={"x-gateway-variant": variant},
            )
        assert (response.status_code, response.content) == (200, expected[variant])
    assert gateway.output.count("all models loaded; ready") == 2
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.wait() == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_under_load_exits_0_with_a_record_per_answer(
    tmp_path: Path, write_config: Callable[..., Path], served: list[GatewayProcess], workers: str
) -> None:
    logs = tmp_path / "logs"
    path = write_config(inference_log={"dir": str(logs)})
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", "--workers", workers)
    served.append(gateway)
    url = gateway.url()
    wait_healthy(url)
    answered: list[int] = []

    def send() -> None:
        with httpx.Client() as client:
            while True:
                try:
                    response = client.post(f"{url}/invocations", json=split_payload(ROWS))
                except httpx.TransportError:
                    return  # the server has stopped taking requests
                answered.append(response.status_code)

    senders = [threading.Thread(target=send, daemon=True) for _ in range(4)]
    for sender in senders:
        sender.start()
    wait_until(lambda: len(answered) >= 40, "answers under load")
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.wait() == 0
    for sender in senders:
        sender.join(60)
    assert set(answered) == {200}
    records = [line for log in logs.glob("*.jsonl") for line in log.read_text("utf-8").splitlines()]
    assert len(records) == len(answered)


def test_version_flag_prints_the_version() -> None:
    from gateway import __version__

    gateway = GatewayProcess("--version")
    assert gateway.wait() == 0
    assert gateway.output.strip() == f"gateway {__version__}"


def test_workers_stop_when_their_supervisor_is_killed(
    write_config: Callable[..., Path], served: list[GatewayProcess]
) -> None:
    gateway, _ = _two_workers(write_config, served)
    workers = _children(gateway.process.pid)
    assert len(workers) == 2
    gateway.process.kill()
    gateway.wait()
    wait_until(
        lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers),
        "the orphaned workers to stop",
    )


def _children(pid: int) -> list[int]:
    """The worker processes whose parent is `pid` (Linux /proc), not multiprocessing's helpers."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            command = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == pid and b"spawn_main" in command:
            found.append(int(stat.parent.name))
    return found


def test_a_given_metrics_directory_is_made_and_emptied_before_serving(
    tmp_path: Path, write_config: Callable[..., Path], served: list[GatewayProcess]
) -> None:
    missing = tmp_path / "not" / "yet" / "metrics"
    gateway = GatewayProcess(
        "serve",
        "--config",
        str(write_config()),
        "--port",
        "0",
        env={"PROMETHEUS_MULTIPROC_DIR": str(missing)},
    )
    served.append(gateway)
    url = gateway.url()
    wait_healthy(url)
    assert httpx.get(f"{url}/metrics").status_code == 200
    gateway.process.send_signal(signal.SIGTERM)
    assert gateway.wait() == 0
    # A restart finds the last run's files and starts from zero.
    stale = {path.name for path in missing.glob("*.db")}
    assert stale
    again = GatewayProcess(
        "serve",
        "--config",
        str(write_config()),
        "--port",
        "0",
        env={"PROMETHEUS_MULTIPROC_DIR": str(missing)},
    )
    served.append(again)
    wait_healthy(again.url())
    assert not stale & {path.name for path in missing.glob("*.db")}


def test_the_demo_command_builds_its_registry_and_serves_what_its_banner_shows(
    tmp_path: Path, served: list[GatewayProcess], capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    gateway = GatewayProcess("demo", "--dir", str(tmp_path / "demo"), "--port", str(port))
    served.append(gateway)
    found: list[str] = []

    def ready() -> bool:
        found.extend(re.findall(r"Gateway demo ready in \S+ on (http://\S+) ", gateway.output))
        return bool(found) or gateway.process.poll() is not None

    wait_until(ready, "the demo's banner", deadline=180)
    assert found, gateway.output
    url = found[0]
    assert url == f"http://127.0.0.1:{port}"
    assert (tmp_path / "demo" / "gateway.yaml").is_file()
    # What the banner's curl lines send: a sticky JSON request, CSV, and a forced challenger.
    sticky = httpx.post(
        f"{url}/invocations", json=split_payload(ROWS), headers={"X-User-Id": "alice"}
    )
    assert sticky.status_code == 200
    assert len(sticky.json()["predictions"]) == len(ROWS)
    assert sticky.headers["x-gateway-variant"] in {"champion", "challenger"}
    csv = httpx.post(
        f"{url}/invocations",
        content=b"tenure_months,monthly_charges,support_calls,plan\n3,89.5,4,basic\n",
        headers={"Content-Type": "text/csv"},
    )
    assert csv.status_code == 200
    forced = httpx.post(
        f"{url}/invocations",
        json=split_payload(ROWS[:1]),
        headers={"x-gateway-variant": "challenger"},
    )
    assert (forced.status_code, forced.headers["x-gateway-model-version"]) == (200, "2")
    # The banner's last two lines: synthetic customers with their true labels, then the verdict.
    outcomes = tmp_path / "demo" / "outcomes.csv"
    traffic = ["demo-traffic", "--url", url, "--requests", "300", "--outcomes", str(outcomes)]
    assert main(traffic) == 0
    gateway.process.send_signal(signal.SIGTERM)
    gateway.wait()
    assert "Traceback" not in gateway.output
    capsys.readouterr()
    logs = tmp_path / "demo" / "inference-logs"
    argv = ["report", "--logs", str(logs), "--outcomes", str(outcomes), "--metric", "accuracy"]
    assert main([*argv, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verdict"]["decision"] in {"promote", "keep_champion", "inconclusive"}
    assert {name: v["outcome"]["n"] > 0 for name, v in report["variants"].items()} == {
        "champion": True,
        "challenger": True,
    }
