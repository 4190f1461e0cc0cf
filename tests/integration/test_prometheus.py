"""The dashboard, the alerts and `gateway rollout run --prometheus`, against a real Prometheus.

A throwaway Prometheus (scripts/prometheus-for-tests installs it) scrapes `gateway serve --workers
2` every second with the rules of deploy/kubernetes/prometheusrule.yaml loaded. Every PromQL
expression of the dashboard and of the rules runs against it, a canary is judged from it, and
promtool checks the rules and the Prometheus configs.
"""

import json
import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import promql_parser
import pytest
import yaml

from gateway.commands import cli
from gateway.core.config import GatewayConfig
from gateway.core.config_file import parse_config
from gateway.core.rollout import AUDIT_TAG_PREFIX, WEIGHTS_TAG
from gateway.serving.registry import Registry
from gateway.serving.runtime import PREDICT_THREADS
from tests.helpers import REPO
from tests.integration import models
from tests.integration.conftest import (
    BackgroundLoad,
    free_port,
    split_payload,
    wait_until,
)
from tests.integration.test_cli import GatewayProcess

NOT_INSTALLED = (
    "Prometheus is not installed: run scripts/prometheus-for-tests as root"
    " (apt-get install --no-install-recommends prometheus)"
)
MISSING = shutil.which("prometheus") is None or shutil.which("promtool") is None
# Skipped at collection, before the session builds its registry; in CI this test must run, and
# a missing Prometheus there is a failure (the `tools` fixture), not a skip.
pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.skipif(MISSING and os.environ.get("CI") != "true", reason=NOT_INSTALLED),
]

DASHBOARD = REPO / "deploy" / "grafana" / "gateway-dashboard.json"
RULES = REPO / "deploy" / "kubernetes" / "prometheusrule.yaml"
COMPOSE_CONFIG = REPO / "deploy" / "compose" / "prometheus.yml"
INTERVAL = "1s"
# The job the alerts select, and the target labels the Prometheus Operator adds to each pod.
JOB = "mlflow-gateway"
TARGET_LABELS = {"namespace": "gateway-test", "pod": "mlflow-gateway-0"}
# Grafana's $__rate_interval: long enough to hold every request this module sends.
RATE_WINDOW = "5m"
OBSERVED, CANARY, FALLBACK = "prom-observed", "prom-canary", "prom-fallback"
NO_VARIANT = "_none"
# Loading models in two workers on a small machine that others share: a generous deadline.
LOAD_DEADLINE = 180.0
# Seconds an HTTP request may take on a busy machine.
TIMEOUT = 30.0
# Requests of the background load during a canary: one every PAUSE seconds, LIMIT at most.
PAUSE, LIMIT = 0.02, 3000
# A canary of two steps: seconds, unless the machine is very busy.
ROLLOUT_DEADLINE = 120.0


@dataclass(frozen=True)
class Tools:
    """The Prometheus binaries."""

    prometheus: str
    promtool: str


@dataclass(frozen=True)
class Served:
    """The gateway under the scrape: its URL, config file and inference-log directory."""

    url: str
    config: Path
    logs: Path


@dataclass(frozen=True)
class Prometheus:
    """A running Prometheus server's HTTP API."""

    url: str

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant vector of `promql` now; fails the test if Prometheus refuses it."""
        document = httpx.get(
            f"{self.url}/api/v1/query", params={"query": promql}, timeout=TIMEOUT
        ).json()
        assert document["status"] == "success", f"{promql}\n{document.get('error')}"
        return list(document["data"]["result"])

    def total(self, promql: str) -> float:
        """The value of a query that yields at most one series (0 for none)."""
        return sum(float(series["value"][1]) for series in self.query(promql))

    def api(self, path: str) -> Any:
        """The `data` of a GET on /api/v1/<path>."""
        document = httpx.get(f"{self.url}/api/v1/{path}", timeout=TIMEOUT).json()
        assert document["status"] == "success", document
        return document["data"]


@pytest.fixture(scope="module")
def tools() -> Tools:
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        pytest.fail(NOT_INSTALLED)
    return Tools(prometheus, promtool)


def _endpoint(name: str, weights: tuple[int, int], **extra: object) -> dict[str, object]:
    champion, challenger = weights
    return {
        "name": name,
        "model": name,
        "variants": [
            {"alias": "champion", "weight": champion},
            {"alias": "challenger", "weight": challenger},
        ],
        "refresh_seconds": 0.5,
        **extra,
    }


@pytest.fixture(scope="module")
def served(
    tools: Tools,
    tracking_uri: str,
    make_config: Callable[..., GatewayConfig],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """`gateway serve --workers 2` on two endpoints of their own models.

    OBSERVED: a healthy champion, a challenger failing a third of its customers, and a shadow
    that disagrees with the champion, batched. CANARY: a champion and a failing challenger, all
    traffic on the champion, for `rollout run`. FALLBACK: a champion that answers for a
    challenger whose backend is down (`fallback`).
    """
    models.register(OBSERVED, "champion", models.ConstantModel(0), tracking_uri)
    models.register(OBSERVED, "challenger", models.FlakyModel(), tracking_uri)
    models.register(OBSERVED, "candidate", models.ConstantModel(1), tracking_uri)
    models.register(CANARY, "champion", models.ConstantModel(0), tracking_uri)
    models.register(CANARY, "challenger", models.FlakyModel(), tracking_uri)
    models.register(FALLBACK, "champion", models.ConstantModel(0), tracking_uri)
    models.register(FALLBACK, "challenger", models.BackendDownModel(), tracking_uri)
    base = tmp_path_factory.mktemp("prometheus-gateway")
    batching = {"max_batch_size": 8, "max_wait_ms": 2}
    config = make_config(
        [
            _endpoint(OBSERVED, (50, 50), shadow=["candidate"], batching=batching),
            _endpoint(CANARY, (100, 0)),
            _endpoint(FALLBACK, (50, 50), fallback="champion"),
        ],
        inference_log={"dir": str(base / "logs")},
    )
    path = base / "gateway.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", "--workers", "2")
    try:
        url = gateway.url()

        def healthy() -> bool:
            if gateway.process.poll() is not None:
                pytest.fail(
                    f"the gateway exited with {gateway.process.returncode}: {gateway.output}"
                )
            return httpx.get(f"{url}/health", timeout=TIMEOUT).status_code == 200

        wait_until(healthy, "both workers to load every version", LOAD_DEADLINE)
        yield Served(url, path, base / "logs")
    finally:
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.wait() == 0, gateway.output


def _write_rules(path: Path) -> Path:
    """The PrometheusRule's `spec` is a Prometheus rules file: its groups."""
    spec = yaml.safe_load(RULES.read_text())["spec"]
    path.write_text(yaml.safe_dump({"groups": spec["groups"]}, sort_keys=False))
    return path


def _write_config(directory: Path, target: str) -> Path:
    """A Prometheus config scraping `target` every second, with the deploy rules loaded."""
    config = {
        "global": {"scrape_interval": INTERVAL, "evaluation_interval": INTERVAL},
        "rule_files": [str(_write_rules(directory / "rules.yml"))],
        "scrape_configs": [
            {
                "job_name": JOB,
                # As the ServiceMonitor does: the gateway's own `endpoint` label is kept.
                "honor_labels": True,
                "static_configs": [{"targets": [target], "labels": TARGET_LABELS}],
            }
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prometheus(
    tools: Tools, served: Served, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """A Prometheus of its own (storage in a temporary directory, loopback only) scraping `served`."""
    base = tmp_path_factory.mktemp("prometheus")
    config = _write_config(base, urlsplit(served.url).netloc)
    server = Prometheus(f"http://127.0.0.1:{free_port()}")
    log_path = base / "prometheus.log"
    command = [
        tools.prometheus,
        f"--config.file={config}",
        f"--storage.tsdb.path={base / 'data'}",
        f"--web.listen-address={urlsplit(server.url).netloc}",
    ]
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:

        def scraping() -> bool:
            if process.poll() is not None:
                pytest.fail(f"prometheus exited with {process.returncode}: {log_path.read_text()}")
            # Prometheus answers 503 until it has read its storage and config.
            ready = httpx.get(f"{server.url}/-/ready", timeout=TIMEOUT).status_code == 200
            return ready and server.query(f'up{{job="{JOB}"}} == 1') != []

        wait_until(scraping, "Prometheus to scrape the gateway")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def traffic(served: Served, prometheus: Prometheus) -> Counter[tuple[str, str]]:
    """A bounded mix of requests to OBSERVED, each on a new connection so that both workers
    answer some: (variant, status) -> requests, as the responses tell. Forced to either variant
    (a third of the challenger's fail), weighted draws of rows that never fail, malformed bodies."""
    url = f"{served.url}/endpoints/{OBSERVED}/invocations"
    requests: list[tuple[dict[str, str], bytes]] = [
        (
            {"x-gateway-variant": "champion" if n % 2 else "challenger"},
            json.dumps(split_payload([[n, 50.0, 1, "basic"]])).encode(),
        )
        for n in range(120)
    ]
    requests += [({}, json.dumps(split_payload([[1, 50.0, 1, "basic"]])).encode())] * 40
    requests += [({}, b"{not json")] * 10
    sent: Counter[tuple[str, str]] = Counter()
    challenger_failed = 0
    for headers, body in requests:
        response = httpx.post(
            url,
            content=body,
            headers={"content-type": "application/json", **headers},
            timeout=TIMEOUT,
        )
        variant = response.headers.get("x-gateway-variant", NO_VARIANT)
        assert variant == headers.get("x-gateway-variant", variant), response.headers
        sent[variant, str(response.status_code)] += 1
        challenger_failed += (
            headers.get("x-gateway-variant") == "challenger" and not response.is_success
        )
    # The challenger's model fails the customers whose tenure is divisible by 3.
    assert challenger_failed == 20, sent
    return sent


def _answered_by_worker(logs: Path) -> Counter[str]:
    """Inference-log records of OBSERVED's requests (shadow copies aside) by the worker that
    wrote them: each process writes files of its own, `inference-<host>-<pid>-<start>-<seq>`."""
    answered: Counter[str] = Counter()
    for path in logs.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").split("\n"):
            record = json.loads(line) if line else {}
            if record.get("endpoint") == OBSERVED and record["routing"] != "shadow":
                answered[path.name.rsplit("-", 1)[0]] += 1
    return answered


def test_prometheus_counts_every_request_that_both_workers_answered(
    served: Served, prometheus: Prometheus, traffic: Counter[tuple[str, str]]
) -> None:
    sent = sum(traffic.values())
    selector = f'endpoint="{OBSERVED}"'
    wait_until(
        lambda: prometheus.total(f"sum(gateway_requests_total{{{selector}}})") >= sent,
        f"Prometheus to count {sent} requests",
    )
    wait_until(lambda: sum(_answered_by_worker(served.logs).values()) >= sent, "the records")

    counted = {
        (series["metric"]["variant"], series["metric"]["status"]): float(series["value"][1])
        for series in prometheus.query(
            f"sum by (variant, status) (gateway_requests_total{{{selector}}})"
        )
    }
    assert counted == {key: float(count) for key, count in traffic.items()}
    latency = prometheus.total(f"sum(gateway_request_duration_seconds_count{{{selector}}})")
    assert latency == sent
    by_worker = _answered_by_worker(served.logs)
    assert sum(by_worker.values()) == sent
    assert len(by_worker) == 2, by_worker


def test_prometheus_sees_the_in_flight_limit_of_each_worker_summed(
    served: Served, prometheus: Prometheus
) -> None:
    # Neither worker is overloaded: each admits max_in_flight, derived from the config.
    config = parse_config(served.config.read_text(), {})
    each = config.in_flight_limit(PREDICT_THREADS)
    wait_until(
        lambda: prometheus.total("sum(gateway_in_flight_limit)") == 2 * each,
        f"Prometheus to see two workers admitting {each} each",
    )


# --- the dashboard ---------------------------------------------------------------------------


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _dashboard_targets() -> list[tuple[str, str]]:
    """(panel title, expression) of every query of the dashboard."""
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (panel["title"], target["expr"])
        for panel in _panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


# Panels of events that this module never causes: their queries run, and find only zeros.
QUIET_PANELS = {
    "Model load failures": "no model version fails to load",
    "Inference-log records dropped": "the inference log keeps up",
    "Shadow copies dropped and failed": "no shadow copy is dropped, and the shadow never fails",
    "Requests shed by reason": "no worker is overloaded",
}
# Panels that a test of their own checks, with the traffic that fills them.
PANELS_TESTED_ELSEWHERE = {
    "Fallbacks by failing variant": "test_a_variant_that_its_fallback_answers_for_raises_alerts",
}
# The endpoint variable as Grafana sends it: All (its allValue), one value, two values.
ENDPOINT_CHOICES = (".*", OBSERVED, f"({OBSERVED}|{CANARY})")


def _as_grafana_sends(expression: str, endpoint: str) -> str:
    """`expression` with Grafana's variables replaced, as Prometheus receives it."""
    for macro in ("$__rate_interval", "$__interval", "$__range"):
        expression = expression.replace(macro, RATE_WINDOW)
    expression = expression.replace("${endpoint}", endpoint).replace("$endpoint", endpoint)
    assert "$" not in expression, f"a Grafana variable this test does not know: {expression}"
    return expression


@pytest.mark.parametrize(
    ("title", "expression"),
    _dashboard_targets(),
    ids=[f"{title}-{index}" for index, (title, _) in enumerate(_dashboard_targets())],
)
def test_dashboard_query_runs_and_finds_series(
    prometheus: Prometheus, traffic: Counter[tuple[str, str]], title: str, expression: str
) -> None:
    if title in PANELS_TESTED_ELSEWHERE:
        return
    for endpoint in ENDPOINT_CHOICES:
        found = prometheus.query(_as_grafana_sends(expression, endpoint))
        if title in QUIET_PANELS:
            assert {series["value"][1] for series in found} <= {"0"}, f"{title}: {found}"
        else:
            assert found, f"{title} finds nothing with endpoint={endpoint!r}"


def test_dashboard_traffic_share_adds_up_to_one_per_endpoint(
    prometheus: Prometheus, traffic: Counter[tuple[str, str]]
) -> None:
    (expression,) = [expr for title, expr in _dashboard_targets() if title.startswith("Traffic")]
    shares: dict[str, float] = {}
    for series in prometheus.query(_as_grafana_sends(expression, OBSERVED)):
        endpoint = series["metric"]["endpoint"]
        shares[endpoint] = shares.get(endpoint, 0.0) + float(series["value"][1])
    assert shares == {OBSERVED: pytest.approx(1.0)}


def test_dashboard_endpoint_variable_lists_the_served_endpoints(
    prometheus: Prometheus, traffic: Counter[tuple[str, str]]
) -> None:
    # The variable's query, label_values(gateway_requests_total, endpoint), is Grafana's
    # shorthand for this API call.
    values = prometheus.api("label/endpoint/values?match[]=gateway_requests_total")
    assert OBSERVED in values


# --- the alert rules -------------------------------------------------------------------------


def _rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


CONDITIONS = {">", "<", ">=", "<=", "==", "!=", "and", "unless"}
# Alerts on failures that this module never causes: their counters are there from the start, at 0
# (a counter series that first appears at 1 is no increase, and the first failure would be missed).
QUIET_RULES = {
    "GatewayModelLoadFailed": "no model version fails to load",
    "GatewayRegistryRefreshFailing": "the registry stays reachable",
    "GatewayInferenceLogDropping": "the inference log keeps up",
}
# Alerts on series that other exporters make.
ELSEWHERE_RULES = {
    "GatewayNoReadyReplicas": "kube_deployment_* comes from kube-state-metrics",
}


def _operands(expression: promql_parser.Expr) -> list[promql_parser.Expr]:
    """The vector expressions that a condition compares or joins (the expression itself if it
    is no condition): what must find series for the condition to mean anything."""
    if isinstance(expression, promql_parser.ParenExpr):
        return _operands(expression.expr)
    if isinstance(expression, promql_parser.NumberLiteral):
        return []
    if (
        isinstance(expression, promql_parser.BinaryExpr)
        and str(expression.op) in CONDITIONS
        and not (expression.modifier and expression.modifier.return_bool)
    ):
        return _operands(expression.lhs) + _operands(expression.rhs)
    return [expression]


@pytest.mark.parametrize(
    "rule", _rules(), ids=lambda rule: str(rule.get("alert", rule.get("record")))
)
def test_rule_runs_and_what_it_compares_finds_series(
    prometheus: Prometheus, traffic: Counter[tuple[str, str]], rule: dict[str, Any]
) -> None:
    name = rule.get("alert", rule.get("record"))
    fired = prometheus.query(rule["expr"])
    operands = _operands(promql_parser.parse(rule["expr"]))
    assert operands
    for operand in operands:
        found = prometheus.query(str(operand))
        if name in ELSEWHERE_RULES:
            assert found == [], f"{name}: {operand} finds {found}"
            continue
        assert found, f"{name}: {operand} finds nothing"
        if name in QUIET_RULES:
            assert {series["value"][1] for series in found} == {"0"}, f"{name}: {found}"
            assert fired == []


def test_prometheus_evaluates_every_rule_without_error(prometheus: Prometheus) -> None:
    expected = {rule.get("alert", rule.get("record")) for rule in _rules()}
    never = "0001-01-01T00:00:00Z"

    def evaluated() -> list[dict[str, Any]] | None:
        groups = prometheus.api("rules")["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        return rules if all(rule["lastEvaluation"] != never for rule in rules) else None

    wait_until(lambda: evaluated() is not None, "every rule to be evaluated")
    rules = evaluated() or []
    assert {rule["name"] for rule in rules} == expected
    assert [(rule["name"], rule.get("lastError")) for rule in rules if rule["health"] != "ok"] == []


def _alerts(prometheus: Prometheus, name: str) -> set[tuple[str, str, str]]:
    """(endpoint, shadow, state) of each active alert `name`."""
    return {
        (alert["labels"].get("endpoint", ""), alert["labels"].get("shadow", ""), alert["state"])
        for alert in prometheus.api("alerts")["alerts"]
        if alert["labels"]["alertname"] == name
    }


def test_the_failing_challenger_and_the_disagreeing_shadow_raise_their_alerts(
    prometheus: Prometheus, traffic: Counter[tuple[str, str]]
) -> None:
    def pending(name: str, endpoint: str, shadow: str = "") -> bool:
        return bool(
            {(endpoint, shadow, "pending"), (endpoint, shadow, "firing")}
            & _alerts(prometheus, name)
        )

    wait_until(
        lambda: pending("GatewayChallengerErrorRateAboveChampion", OBSERVED),
        "the challenger alert for the flaky challenger",
    )
    wait_until(
        lambda: pending("GatewayShadowDisagreement", OBSERVED, "candidate"),
        "the shadow alert",
    )


def test_a_variant_that_its_fallback_answers_for_raises_alerts(
    served: Served, prometheus: Prometheus
) -> None:
    url = f"{served.url}/endpoints/{FALLBACK}/invocations"
    for n in range(160):
        response = httpx.post(url, json=split_payload([[n, 50.0, 1, "basic"]]), timeout=TIMEOUT)
        # The clients see no error: the champion answers for the challenger.
        assert response.status_code == 200, response.text
        assert response.headers["x-gateway-variant"] == "champion"

    def raised(name: str) -> bool:
        return bool(
            {(FALLBACK, "", "pending"), (FALLBACK, "", "firing")} & _alerts(prometheus, name)
        )

    wait_until(lambda: raised("GatewayFallbackAnswering"), "the fallback alert")
    # The challenger failed every attempt, none of which gateway_requests_total counts under it.
    wait_until(
        lambda: raised("GatewayChallengerErrorRateAboveChampion"),
        "the challenger alert, from the fallback's counts",
    )
    (expression,) = [
        expr for title, expr in _dashboard_targets() if title == "Fallbacks by failing variant"
    ]
    found = prometheus.query(_as_grafana_sends(expression, FALLBACK))
    assert {series["metric"]["variant"] for series in found if float(series["value"][1]) > 0} == {
        "challenger"
    }


# --- the canary judged from Prometheus -------------------------------------------------------


class PacedLoad(BackgroundLoad):
    """One client sending a request every PAUSE seconds, LIMIT at most, until stopped."""

    def __init__(self, url: str, rows: Callable[[int], list[object]]) -> None:
        super().__init__([partial(self._run, url, rows)])

    def _run(self, url: str, rows: Callable[[int], list[object]]) -> None:
        with httpx.Client(timeout=TIMEOUT) as client:
            for n in range(LIMIT):
                if self.stopped.wait(PAUSE):
                    return
                client.post(url, json=split_payload([rows(n)]))


def _rollout_run(served: Served, prometheus: Prometheus) -> tuple[int, str]:
    """`gateway rollout run --prometheus` at 50% then 100%, two seconds an interval, under a
    paced load: its exit status and what it printed."""
    with PacedLoad(f"{served.url}/endpoints/{CANARY}/invocations", lambda n: [n, 50.0, 1, "basic"]):
        rollout = GatewayProcess(
            *("rollout", "run", "--config", str(served.config), "--endpoint", CANARY),
            *("--prometheus", prometheus.url, "--steps", "50,100", "--interval", "2"),
            *("--min-requests", "20", "--max-holds", "5"),
            # Identical models: a p99 from a few dozen requests on a busy machine is noise.
            *("--max-p99-ratio", "50"),
        )
        try:
            status = rollout.wait(ROLLOUT_DEADLINE)
        finally:
            if rollout.process.poll() is None:
                rollout.process.kill()
    return status, rollout.output


def _audit_trail(tags: dict[str, str]) -> list[dict[str, Any]]:
    return [
        json.loads(value) for key, value in sorted(tags.items()) if key.startswith(AUDIT_TAG_PREFIX)
    ]


def _serves_everywhere(url: str, variant: str, version: str) -> bool:
    """Whether fresh connections (spread over both workers) all get `version` for `variant`."""
    answered = {
        httpx.post(
            f"{url}/endpoints/{CANARY}/invocations",
            json=split_payload([[1, 50.0, 1, "basic"]]),
            headers={"x-gateway-variant": variant},
            timeout=TIMEOUT,
        ).headers.get("x-gateway-model-version")
        for _ in range(20)
    }
    return answered == {version}


def test_rollout_run_judged_by_prometheus_rolls_back_a_failing_challenger_and_promotes_a_fix(
    served: Served,
    prometheus: Prometheus,
    tracking_uri: str,
) -> None:
    registry = Registry(tracking_uri, None)
    champion = registry.model_state(CANARY).aliases["champion"]

    status, printed = _rollout_run(served, prometheus)

    assert status == cli.EXIT_FAILED, printed
    assert "rollback: guard at step 50%" in printed
    state = registry.model_state(CANARY)
    assert state.aliases["champion"] == champion
    assert json.loads(state.tags[WEIGHTS_TAG]) == {"champion": 100, "challenger": 0}
    trail = _audit_trail(state.tags)
    assert trail[-1]["action"] == "rollback"
    assert trail[-1]["figures"]["challenger"]["error_rate"] > 0.1

    fixed = models.register(CANARY, "challenger", models.ConstantModel(0), tracking_uri)
    wait_until(
        lambda: _serves_everywhere(served.url, "challenger", fixed),
        "both workers to load the fixed challenger",
        LOAD_DEADLINE,
    )
    status, printed = _rollout_run(served, prometheus)

    assert status == cli.EXIT_OK, printed
    state = registry.model_state(CANARY)
    assert state.aliases["champion"] == fixed
    assert json.loads(state.tags[WEIGHTS_TAG]) == {"champion": 100, "challenger": 0}
    trail = _audit_trail(state.tags)[len(trail) :]
    actions = [entry["action"] for entry in trail]
    assert [action for action in actions if action.endswith("advance")] == [
        "step 50%: advance",
        "step 100%: advance",
    ]
    assert actions[-1] == "promote"
    judged = [entry["figures"] for entry in trail if entry["action"].endswith("advance")]
    assert all(figures["challenger"]["requests"] >= 20 for figures in judged), judged


# --- promtool --------------------------------------------------------------------------------


def _promtool(tools: Tools, *args: str | Path) -> None:
    result = subprocess.run(
        [tools.promtool, *map(str, args)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules(tools: Tools, tmp_path: Path) -> None:
    _promtool(tools, "check", "rules", _write_rules(tmp_path / "rules.yml"))


def test_promtool_accepts_the_compose_prometheus_config(tools: Tools) -> None:
    _promtool(tools, "check", "config", COMPOSE_CONFIG)


def test_promtool_accepts_this_test_s_prometheus_config(tools: Tools, tmp_path: Path) -> None:
    _promtool(tools, "check", "config", _write_config(tmp_path, "127.0.0.1:8080"))


def test_promtool_finds_nothing_to_lint_in_the_gateway_metrics(
    tools: Tools, served: Served, traffic: Counter[tuple[str, str]]
) -> None:
    exposition = httpx.get(f"{served.url}/metrics", timeout=TIMEOUT).text
    result = subprocess.run(
        [tools.promtool, "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
