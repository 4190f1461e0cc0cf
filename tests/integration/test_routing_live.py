"""Traffic splitting on real servers: per-row stickiness, shadows, and stickiness across workers."""

import json
import signal
from collections.abc import Callable
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from gateway.commands.demo import FEATURES, MODEL_NAME
from gateway.core.config import GatewayConfig
from gateway.core.routing import choose_sticky
from gateway.observe import metrics
from gateway.serving.registry import ModelVersion, Registry
from tests.integration import models
from tests.integration.conftest import running_gateway, split_payload, wait_healthy, wait_until
from tests.integration.test_cli import GatewayProcess

ROWS: list[list[object]] = [
    [3, 89.5, 4, "basic"],
    [48, 30.0, 0, "pro"],
    [12, 55.25, 2, "plus"],
    [70, 110.0, 7, "basic"],
]


@pytest.fixture(scope="module")
def candidate_version(tracking_uri: str) -> str:
    """A gated pyfunc version of the churn model, alias `candidate`."""
    return models.register(MODEL_NAME, "candidate", models.GatedModel(), tracking_uri)


def _even_split(sticky: dict[str, str]) -> list[dict[str, object]]:
    """The churn endpoint, champion and challenger 50/50, sticky as given."""
    variants = [{"alias": "champion", "weight": 50}, {"alias": "challenger", "weight": 50}]
    return [{"name": "churn", "model": MODEL_NAME, "variants": variants, "sticky": sticky}]


def test_rows_of_many_users_are_each_served_by_their_variant_in_order(
    make_config: Callable[..., GatewayConfig],
) -> None:
    config = make_config(_even_split(sticky={"field": "customer_id"}))
    users = [f"customer-{n}" for n in range(50)]
    rows = [[*ROWS[n % len(ROWS)], user] for n, user in enumerate(users * 2)]
    body = {"dataframe_split": {"columns": [*FEATURES, "customer_id"], "data": rows}}
    registry = Registry(config.tracking_uri, None)
    direct = {
        variant: registry.load(ModelVersion(MODEL_NAME, version, None)).pyfunc
        for variant, version in (("champion", "1"), ("challenger", "2"))
    }
    expected = []
    for row in rows:
        variant = choose_sticky("churn", str(row[-1]), {"champion": 50, "challenger": 50})
        expected.append(
            direct[variant].predict(pd.DataFrame([row[:-1]], columns=list(FEATURES))).tolist()[0]
        )
    with running_gateway(config) as url:
        response = httpx.post(f"{url}/invocations", json=body)
    assert response.status_code == 200
    assert response.json()["predictions"] == expected
    variants = response.headers["x-gateway-variant"].split(",")
    versions = response.headers["x-gateway-model-version"].split(",")
    assert sorted(zip(variants, versions, strict=True)) == [("challenger", "2"), ("champion", "1")]


def test_a_request_without_the_sticky_column_is_a_400(
    make_config: Callable[..., GatewayConfig],
) -> None:
    config = make_config(
        [
            {
                "name": "churn",
                "model": MODEL_NAME,
                "variants": [{"alias": "champion"}],
                "sticky": {"field": "customer_id"},
            }
        ]
    )
    with running_gateway(config) as url:
        response = httpx.post(f"{url}/invocations", json=split_payload(ROWS))
    assert response.status_code == 400
    assert "'customer_id' column" in response.json()["message"]


def _shadow_config(make_config: Callable[..., GatewayConfig], concurrency: int) -> GatewayConfig:
    return make_config(
        [
            {
                "name": "churn",
                "model": MODEL_NAME,
                "variants": [{"alias": "champion"}],
                "shadow": ["candidate"],
                "shadow_concurrency": concurrency,
            }
        ]
    )


def _counter(counter: object, *labels: str) -> float:
    return float(counter.labels(*labels)._value.get())  # type: ignore[attr-defined]


def test_a_shadow_never_holds_up_or_changes_the_answer_and_its_agreement_is_counted(
    make_config: Callable[..., GatewayConfig], candidate_version: str
) -> None:
    models.GATE.clear()
    try:
        with running_gateway(_shadow_config(make_config, 4)) as url:
            compared = _counter(
                metrics.SHADOW_ROWS_COMPARED, "churn", "candidate", candidate_version
            )
            differing = _counter(
                metrics.SHADOW_ROWS_DIFFERING, "churn", "candidate", candidate_version
            )
            reference = httpx.post(
                f"{url}/invocations",
                json=split_payload(ROWS),
                headers={"x-gateway-variant": "champion"},
            )
            # The shadow model is stuck at its gate, yet the answer is complete and the champion's.
            response = httpx.post(f"{url}/invocations", json=split_payload(ROWS))
            assert (response.status_code, response.content) == (200, reference.content)
            assert response.headers["x-gateway-variant"] == "champion"
            models.GATE.set()
            wait_until(
                lambda: (
                    _counter(metrics.SHADOW_ROWS_COMPARED, "churn", "candidate", candidate_version)
                    == compared + 8
                ),
                "both shadow predictions",
            )
            served = json.loads(response.content)["predictions"]
            assert _counter(
                metrics.SHADOW_ROWS_DIFFERING, "churn", "candidate", candidate_version
            ) - differing == 2 * sum(1 for prediction in served if prediction != 1)
    finally:
        models.GATE.set()


def test_shadow_copies_beyond_the_concurrency_limit_are_dropped_and_counted(
    make_config: Callable[..., GatewayConfig], candidate_version: str
) -> None:
    models.GATE.clear()
    try:
        with running_gateway(_shadow_config(make_config, 1)) as url:
            dropped = _counter(metrics.SHADOW_DROPPED, "churn", "candidate")
            statuses = [
                httpx.post(f"{url}/invocations", json=split_payload(ROWS)).status_code
                for _ in range(6)
            ]
            assert statuses == [200] * 6
            # The first copy holds the only slot at the gate; the other five found it taken.
            assert _counter(metrics.SHADOW_DROPPED, "churn", "candidate") - dropped == 5
            models.GATE.set()
    finally:
        models.GATE.set()


@pytest.mark.slow
def test_a_user_gets_the_same_variant_on_every_worker_and_after_a_restart(
    tmp_path: Path, make_config: Callable[..., GatewayConfig]
) -> None:
    config = make_config(_even_split(sticky={"header": "X-User-Id"}))
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_none=True)))
    users = [f"user-{n}" for n in range(30)]
    runs = []
    for _ in range(2):  # the second run is the restart
        gateway = GatewayProcess("serve", "--config", str(path), "--port", "0", "--workers", "2")
        try:
            url = gateway.url()
            wait_healthy(url, "both workers")
            seen: dict[str, set[str]] = {}
            for _ in range(4):
                for user in users:
                    # A new connection each time: the requests land on both workers.
                    response = httpx.post(
                        f"{url}/invocations", json=split_payload(ROWS), headers={"X-User-Id": user}
                    )
                    seen.setdefault(user, set()).add(response.headers["x-gateway-variant"])
            assert all(len(variants) == 1 for variants in seen.values())
            runs.append({user: variants.pop() for user, variants in seen.items()})
        finally:
            gateway.process.send_signal(signal.SIGTERM)
            assert gateway.wait() == 0
    assert runs[0] == runs[1]
    assert set(runs[0].values()) == {"champion", "challenger"}
    assert runs[0] == {
        user: choose_sticky("churn", user, {"champion": 50, "challenger": 50}) for user in users
    }
