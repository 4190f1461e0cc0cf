"""What the live servers answer: MLflow's bytes, smoke answers, row (c)'s log and metrics."""

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from benchmarks.gatewaybench.errors import BenchmarkError
from benchmarks.gatewaybench.plan import ROWS, STICKY_HEADER, USER_IDS
from benchmarks.gatewaybench.servers import RunningServer
from benchmarks.gatewaybench.targets import Observability

SMOKE_REQUESTS = 20
HTTP_TIMEOUT_SECONDS = 30.0
FORCE_HEADER = "x-gateway-variant"


def _post(
    client: httpx.Client, server: RunningServer, body: bytes, headers: dict[str, str]
) -> httpx.Response:
    try:
        return client.post(
            f"{server.url}/invocations",
            content=body,
            headers={"Content-Type": "application/json", **headers},
        )
    except httpx.HTTPError as exc:
        raise BenchmarkError(f"{server.spec.name}: request failed: {exc!r}") from exc


def check_predictions(
    servers: Sequence[RunningServer], bodies: dict[int, bytes]
) -> dict[int, bytes]:
    """Every server answers each payload with MLflow's bytes; returns MLflow's answers."""
    reference: dict[int, bytes] = {}
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
        for server in servers:
            # A split endpoint is forced onto the champion, the version MLflow serves.
            headers = {FORCE_HEADER: "champion"} if server.spec.split else {}
            for rows, body in bodies.items():
                response = _post(client, server, body, headers)
                answer = response.content
                if server.spec.gateway_config is None:
                    _check_shape(server, rows, response)
                    reference[rows] = answer
                    continue
                variant = response.headers.get(FORCE_HEADER)
                if response.status_code != 200 or answer != reference[rows]:
                    raise BenchmarkError(
                        f"predictions differ for the {rows}-row payload: {server.spec.name} "
                        f"answered {response.status_code} {_clip(answer)}, mlflow serve answered "
                        f"200 {_clip(reference[rows])}"
                    )
                if variant != "champion":
                    raise BenchmarkError(
                        f"{server.spec.name} served variant {variant!r}, expected 'champion'"
                    )
    print("predictions identical on every server for " + ", ".join(f"{r}-row" for r in bodies))
    return reference


def _check_shape(server: RunningServer, rows: int, response: httpx.Response) -> None:
    try:
        predictions = response.json()["predictions"]
    except (ValueError, KeyError, TypeError):
        predictions = None
    if response.status_code != 200 or not isinstance(predictions, list) or len(predictions) != rows:
        raise BenchmarkError(
            f"{server.spec.name} answered {response.status_code} {_clip(response.content)} "
            f"for the {rows}-row payload; expected {rows} prediction(s)"
        )


def _clip(body: bytes, limit: int = 200) -> str:
    text = body.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


def smoke(
    servers: Sequence[RunningServer], bodies: dict[int, bytes], reference: dict[int, bytes]
) -> list[dict[str, Any]]:
    """SMOKE_REQUESTS requests per server, as the load would send them; each answer checked."""
    rows_out = []
    with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
        for server in servers:
            for index in range(SMOKE_REQUESTS):
                rows = ROWS[index % len(ROWS)]
                headers = {STICKY_HEADER: _user_id(index)} if server.spec.split else {}
                response = _post(client, server, bodies[rows], headers)
                _check_shape(server, rows, response)
                variant = response.headers.get(FORCE_HEADER, "champion")
                if variant == "champion" and response.content != reference[rows]:
                    raise BenchmarkError(
                        f"predictions differ: {server.spec.name} answered "
                        f"{_clip(response.content)} for the {rows}-row payload, mlflow serve "
                        f"answered {_clip(reference[rows])}"
                    )
            rows_out.append(
                {
                    "server": server.spec.label,
                    "workers": server.spec.workers,
                    "features": server.spec.features,
                    "answers checked": SMOKE_REQUESTS,
                }
            )
            print(f"{server.spec.name} ({server.spec.features}): {SMOKE_REQUESTS} correct answers")
    return rows_out


def _user_id(index: int) -> str:
    return f"user-{index % USER_IDS:05d}"


def check_observability(server: RunningServer, log_dir: Path) -> Observability:
    """What row (c)'s server left: inference-log bytes on disk and the status of /metrics."""
    written = sum(path.stat().st_size for path in log_dir.rglob("*") if path.is_file())
    try:
        with httpx.Client(timeout=HTTP_TIMEOUT_SECONDS, trust_env=False) as client:
            status: int | None = client.get(f"{server.url}/metrics").status_code
    except httpx.HTTPError:
        status = None
    return Observability(written, status)
