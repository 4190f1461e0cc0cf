"""Bearer-token auth on a real gateway on loopback, with real tokens files."""

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.core.config import GatewayConfig
from tests.helpers import read_records, sample, scrape
from tests.integration.conftest import running_gateway, split_payload, wait_until

CI_TOKEN = "ci-token-0123456789abcdef"
BATCH_TOKEN = "batch-token-fedcba9876543210"
NEW_TOKEN = "rotated-token-00112233445566"
WRONG_TOKEN = "ci-token-0123456789abcdeX"
ROWS: list[list[object]] = [[3, 89.5, 4, "basic"], [48, 30.0, 0, "pro"]]
INVOCATIONS = [
    "/invocations",
    "/endpoints/churn/invocations",
    "/serving-endpoints/churn/invocations",
]
READS = ["/metrics", "/endpoints", "/version"]
PROBES = ["/ping", "/health"]


def write_tokens(path: Path, text: str) -> None:
    """Replace the tokens file atomically, as a deploy or a secret volume does."""
    staged = path.with_name(path.name + ".new")
    staged.write_text(text, encoding="utf-8")
    os.replace(staged, path)


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def invoke(url: str, path: str = "/invocations", **headers: str) -> httpx.Response:
    return httpx.post(url + path, json=split_payload(ROWS), headers=headers)


@pytest.fixture(scope="module")
def auth_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("auth")


@pytest.fixture(scope="module")
def auth_url(make_config: Callable[..., GatewayConfig], auth_dir: Path) -> Iterator[str]:
    """A gateway with two tokens, reads open, and an inference log of its own."""
    tokens = auth_dir / "tokens"
    write_tokens(tokens, f"# callers\nci:{CI_TOKEN}\nbatch:{BATCH_TOKEN}\n")
    config = make_config(
        auth={"tokens_file": str(tokens)}, inference_log={"dir": str(auth_dir / "log")}
    )
    with running_gateway(config) as url:
        yield url


def record_of(directory: Path, request_id: str) -> dict[str, Any]:
    """The one inference-log record of a request, once the writer has written it."""
    found: list[dict[str, Any]] = []

    def written() -> bool:
        found[:] = [r for r in read_records(directory) if r["request_id"] == request_id]
        return bool(found)

    wait_until(written, f"the record of {request_id}")
    (record,) = found
    return record


def assert_refused(response: httpx.Response, *secrets: str) -> None:
    """A 401 with the Bearer challenge, the MLflow-style body, and no token echoed."""
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error_code"] == "UNAUTHENTICATED"
    for secret in secrets:
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())


@pytest.mark.parametrize("path", INVOCATIONS)
@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 401),
        (bearer(WRONG_TOKEN), 401),
        ({"authorization": f"Basic {CI_TOKEN}"}, 401),
        ({"authorization": "Bearer"}, 401),
        (bearer(CI_TOKEN), 200),
        ({"authorization": f"bearer {BATCH_TOKEN}"}, 200),
    ],
)
def test_invocations_need_a_valid_bearer_token(
    auth_url: str, path: str, headers: dict[str, str], status: int
) -> None:
    response = invoke(auth_url, path, **headers)
    if status == 401:
        assert_refused(response, CI_TOKEN, WRONG_TOKEN, BATCH_TOKEN)
    else:
        assert response.status_code == 200, response.text
        assert "predictions" in response.json()
        assert "www-authenticate" not in response.headers


def test_an_unknown_endpoint_is_refused_before_it_is_looked_up(auth_url: str) -> None:
    assert_refused(invoke(auth_url, "/endpoints/fraud/invocations"))
    assert invoke(auth_url, "/endpoints/fraud/invocations", **bearer(CI_TOKEN)).status_code == 404


@pytest.mark.parametrize("path", PROBES + READS)
def test_probes_and_reads_are_open_unless_reads_are_protected(auth_url: str, path: str) -> None:
    assert httpx.get(auth_url + path).status_code == 200


def test_the_record_names_the_token_and_never_holds_it(auth_url: str, auth_dir: Path) -> None:
    response = invoke(auth_url, **bearer(BATCH_TOKEN), **{"x-request-id": "auth-requester"})
    assert response.status_code == 200
    record = record_of(auth_dir / "log", "auth-requester")
    assert record["requester"] == "batch"
    assert record["status_code"] == 200
    assert BATCH_TOKEN not in str(record)


def test_a_refusal_is_counted_and_recorded_once(auth_url: str, auth_dir: Path) -> None:
    before = scrape(auth_url)
    response = invoke(
        auth_url, "/endpoints/churn/invocations", **bearer(WRONG_TOKEN), **{"x-request-id": "r401"}
    )
    assert_refused(response, WRONG_TOKEN)
    after = scrape(auth_url)
    counted = sample(after, "gateway_requests_total", endpoint="churn", status="401") - sample(
        before, "gateway_requests_total", endpoint="churn", status="401"
    )
    assert counted == 1
    record = record_of(auth_dir / "log", "r401")
    assert (record["status_code"], record["requester"], record["variant"]) == (401, None, None)
    assert record["error"] == response.json()["message"]
    assert record["request"] == ""  # the body of a refused request is never read
    assert WRONG_TOKEN not in str(record)


def test_protected_reads_need_a_token_and_probes_stay_open(
    make_config: Callable[..., GatewayConfig], tmp_path: Path
) -> None:
    tokens = tmp_path / "tokens"
    write_tokens(tokens, f"ci:{CI_TOKEN}\n")
    config = make_config(auth={"tokens_file": str(tokens), "protect_read": True})
    with running_gateway(config) as url:
        for path in PROBES:
            assert httpx.get(url + path).status_code == 200, path
        for path in READS:
            assert_refused(httpx.get(url + path), CI_TOKEN)
            assert_refused(httpx.get(url + path, headers=bearer(WRONG_TOKEN)), WRONG_TOKEN)
            assert httpx.get(url + path, headers=bearer(CI_TOKEN)).status_code == 200, path


def test_tokens_rotate_without_a_restart_and_a_bad_file_keeps_them(
    make_config: Callable[..., GatewayConfig], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.serving.auth")
    tokens = tmp_path / "tokens"
    write_tokens(tokens, f"ci:{CI_TOKEN}\n")
    with running_gateway(make_config(auth={"tokens_file": str(tokens)})) as url:
        assert invoke(url, **bearer(CI_TOKEN)).status_code == 200
        # An invalid file (a short token) is reported by line and the old tokens stay.
        write_tokens(tokens, f"ci:{CI_TOKEN}\nnew:{NEW_TOKEN[:10]}\n")
        wait_until(lambda: "is invalid" in caplog.text, "the invalid file to be reported")
        assert "line 2: the token must have at least 16 characters" in caplog.text
        assert invoke(url, **bearer(CI_TOKEN)).status_code == 200
        assert_refused(invoke(url, **bearer(NEW_TOKEN[:10])))
        # A valid file replaces the tokens: the new one works, the old one is refused.
        write_tokens(tokens, f"ci:{NEW_TOKEN}\n")
        wait_until(
            lambda: invoke(url, **bearer(NEW_TOKEN)).status_code == 200, "the new token to work"
        )
        assert_refused(invoke(url, **bearer(CI_TOKEN)), CI_TOKEN, NEW_TOKEN)
    for secret in (CI_TOKEN, NEW_TOKEN, NEW_TOKEN[:10]):
        assert secret not in caplog.text
