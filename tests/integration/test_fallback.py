"""Fallback on a real server: a challenger that fails with a 500 is answered for by the champion."""

from collections.abc import Callable
from pathlib import Path

import httpx

from gateway.commands.demo import FEATURES
from gateway.core.config import GatewayConfig
from tests.helpers import read_records, sample, scrape
from tests.integration import models
from tests.integration.conftest import running_gateway

REQUESTS = 5


def test_a_failing_challenger_is_answered_by_the_champion_and_both_are_recorded(
    make_config: Callable[..., GatewayConfig], tracking_uri: str, tmp_path: Path
) -> None:
    champion = models.register("guarded", "champion", models.ConstantModel(7), tracking_uri)
    challenger = models.register("guarded", "challenger", models.BackendDownModel(), tracking_uri)
    endpoint = {
        "name": "guarded",
        "model": "guarded",
        # Every user is the challenger's; it fails every request.
        "variants": [{"alias": "champion", "weight": 0}, {"alias": "challenger", "weight": 1}],
        "sticky": {"header": "X-User-Id"},
        "fallback": "champion",
    }
    secret = "a-secret-of-the-fallback-test"
    config = make_config(
        [endpoint], inference_log={"dir": str(tmp_path), "user_key_secret": secret}
    )
    body = {"dataframe_split": {"columns": list(FEATURES), "data": [[3, 50.0, 1, "basic"]]}}
    with running_gateway(config) as url:
        before = scrape(url)
        answers = [
            httpx.post(
                f"{url}/endpoints/guarded/invocations",
                json=body,
                headers={"x-request-id": f"r{n}", "x-user-id": f"user-{n}"},
            )
            for n in range(REQUESTS)
        ]
        after = scrape(url)
        described = httpx.get(f"{url}/endpoints").json()

    assert described[0]["fallback"] == "champion"
    for answer in answers:
        assert answer.status_code == 200
        assert answer.json() == {"predictions": [7]}
        assert answer.headers["x-gateway-variant"] == "champion"
        assert answer.headers["x-gateway-model-version"] == champion
        assert answer.headers["x-gateway-fallback"] == "challenger"

    def delta(name: str, **labels: str) -> float:
        return sample(after, name, endpoint="guarded", **labels) - sample(
            before, name, endpoint="guarded", **labels
        )

    # The request is counted once, as answered; the failed attempt in the fallback counter.
    assert delta("gateway_requests_total") == REQUESTS
    assert delta("gateway_requests_total", variant="champion", status="200") == REQUESTS
    assert delta("gateway_fallback_total", variant="challenger", status="500") == REQUESTS
    assert delta("gateway_fallback_total") == REQUESTS
    records = read_records(tmp_path)
    for n in range(REQUESTS):
        # Two records a request: the attempt's first, then the fallback's.
        attempt, served = (r for r in records if r["request_id"] == f"r{n}")
        assert (attempt["variant"], attempt["model_version"], attempt["routing"]) == (
            "challenger",
            challenger,
            "sticky",
        )
        assert (attempt["status_code"], attempt["response"]) == (500, None)
        assert "the feature store is down" in attempt["error"]
        assert (served["variant"], served["model_version"], served["routing"]) == (
            "champion",
            champion,
            "fallback",
        )
        assert (served["status_code"], served["error"]) == (200, None)
        assert served["response"] == answers[n].text
        assert served["user_key_hash"] == attempt["user_key_hash"] is not None
