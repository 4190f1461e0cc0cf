"""The HTTP edge: routes, the three exception handlers, and outcomes rendered as responses.

It reads a request, hands it to the runtime's invocation service, and maps the outcome to a
status, a body and headers; it builds nothing but the routes (the runtime is built by
`gateway.serving.runtime.build_runtime`).
"""

import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

import mlflow
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.core.errors import GatewayError, ShedError, internal_error
from gateway.http.body import BodyReader, ClientGoneError
from gateway.http.invocations import INVOCATIONS
from gateway.http.invocations import request_id as new_request_id
from gateway.observe import metrics
from gateway.serving.auth import TokenStore
from gateway.serving.outcome import Invocation, Outcome
from gateway.serving.runtime import Runtime
from gateway.serving.service import InvocationService

logger = logging.getLogger(__name__)

JSON = "application/json"


def create_app(runtime: Runtime, *, peers_ready: Callable[[], bool] | None = None) -> ASGIApp:
    """The gateway's ASGI app over a runtime; `peers_ready` tells whether other workers are ready."""
    config = runtime.config
    auth = runtime.auth
    routes = _Routes(runtime, peers_ready)
    reader = BodyReader(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    rest = Starlette(
        routes=[
            Route("/ping", routes.ping, methods=["GET"]),
            Route("/health", routes.health, methods=["GET"]),
            Route("/version", routes.version, methods=["GET"]),
            Route("/endpoints", routes.endpoints, methods=["GET"]),
            *(
                [Route("/metrics", routes.metrics, methods=["GET"])]
                if config.metrics.enabled
                else []
            ),
        ],
        exception_handlers={
            GatewayError: _gateway_error,
            HTTPException: _http_error,
            Exception: _unexpected_error,
        },
        lifespan=lifespan,
    )

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        # Invocations, the hot path, skip Starlette's middleware, router, Request and Response
        # (~12% of a request's CPU); every other route and the lifespan are Starlette's.
        if scope["type"] == "http":
            found = INVOCATIONS.fullmatch(scope["path"])
            if found is not None:
                name = found["name"]
                await _invoke(runtime.service, reader, auth, name, scope, receive, send)
                return
        await rest(scope, receive, send)

    return app


class _Routes:
    """The routes besides invocations: probes, the version, the endpoints and the metrics.

    The probes are always open; the others need a token when `auth.protect_read` is set.
    """

    def __init__(self, runtime: Runtime, peers_ready: Callable[[], bool] | None) -> None:
        self._runtime = runtime
        self._peers_ready = peers_ready
        auth = runtime.config.auth
        self._read_auth = runtime.auth if auth is not None and auth.protect_read else None

    def _authorize_read(self, request: Request) -> None:
        if self._read_auth is not None:
            self._read_auth.requester(request.headers.get("authorization"))

    async def ping(self, request: Request) -> Response:
        return Response("\n", media_type=JSON)

    async def health(self, request: Request) -> Response:
        if not self._runtime.pool.ready:
            raise GatewayError("TEMPORARILY_UNAVAILABLE", "Models are still loading.")
        if self._peers_ready is not None and not self._peers_ready():
            raise GatewayError("TEMPORARILY_UNAVAILABLE", "Another worker is still loading models.")
        return Response("\n", media_type=JSON)

    async def version(self, request: Request) -> Response:
        self._authorize_read(request)
        # The bare MLflow version, as `mlflow models serve` answers (`gateway --version` has ours).
        return Response(mlflow.__version__, media_type=JSON)

    async def endpoints(self, request: Request) -> Response:
        self._authorize_read(request)
        names = [endpoint.name for endpoint in self._runtime.config.endpoints]
        return _json([_describe(self._runtime, name) for name in names])

    async def metrics(self, request: Request) -> Response:
        self._authorize_read(request)
        metrics.flush()  # this worker's latest counts (on the loop, where they are made)
        # With several workers this reads every worker's files: off the event loop.
        body, content_type = await asyncio.to_thread(
            metrics.exposition, request.headers.get("accept")
        )
        return Response(body, headers={"content-type": content_type})


def _describe(runtime: Runtime, name: str) -> dict[str, Any]:
    endpoint = runtime.service.endpoint(name)
    return {
        "name": endpoint.name,
        "model": endpoint.model,
        "variants": [dataclasses.asdict(status) for status in runtime.pool.describe(endpoint)],
        "shadow": list(endpoint.shadow),
        "sticky": endpoint.sticky.model_dump(exclude_none=True) if endpoint.sticky else None,
        "allow_override": endpoint.allow_override,
        "fallback": endpoint.fallback,
    }


async def _invoke(
    service: InvocationService,
    reader: BodyReader,
    auth: TokenStore | None,
    name: str | None,
    scope: Scope,
    receive: Receive,
    send: Send,
) -> None:
    """Read the request, invoke the service, send the outcome: the whole invocation endpoint."""
    if scope["method"] != "POST":
        await _send_error(send, _method_not_allowed(scope["method"], scope["path"]), _ALLOW_POST)
        return
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        # The first of repeated headers, as Starlette's Headers.get gives it.
        headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
    requester: str | None = None
    refusal: GatewayError | None = None
    if auth is not None:
        # The token stops here: the service, the records and the shadows never see it.
        try:
            requester = auth.requester(headers.pop("authorization", None))
        except GatewayError as error:
            refusal = error
    request_id = new_request_id(headers.get("x-request-id"))
    invocation = Invocation(
        request_id,
        name,
        b"",
        headers.get("content-type"),
        headers,
        time.time(),
        time.perf_counter(),
        requester,
        scope["path"],
    )
    if refusal is not None:
        # Counted and recorded like any refusal; the body is never read.
        await _send_outcome(send, service.refuse(invocation, refusal))
        return
    try:
        body = await reader.read(receive, headers)
    except GatewayError as error:
        # The rest of the body is not read: the connection cannot carry another request.
        await _send_outcome(send, service.refuse(invocation, error), close=True)
        return
    except ClientGoneError:
        service.refuse(invocation, GatewayError("CLIENT_CLOSED_REQUEST", "The client went away."))
        return
    read = dataclasses.replace(invocation, body=body, received=time.perf_counter())
    try:
        outcome = await service.invoke(read)
    finally:
        reader.release(len(body))
    await _send_outcome(send, outcome)


async def _send_outcome(send: Send, outcome: Outcome, *, close: bool = False) -> None:
    headers = [(b"x-request-id", outcome.invocation.request_id.encode("latin-1"))]
    if close:
        headers.append(_CLOSE)
    if outcome.parts:
        variants = ",".join(part.variant for part in outcome.parts)
        versions = ",".join(part.model_version for part in outcome.parts)
        # The header the Databricks SDK reads into `QueryEndpointResponse.served_model_name`:
        # `{variant}-{version}` (`champion-7`), like Databricks' default served-model name
        # `{model}-{version}`; one a variant, comma-separated, when rows were split.
        served = ",".join(f"{part.variant}-{part.model_version}" for part in outcome.parts)
        headers.append((b"x-gateway-variant", variants.encode("latin-1")))
        headers.append((b"x-gateway-model-version", versions.encode("latin-1")))
        headers.append((b"served-model-name", served.encode("latin-1")))
    attempt = outcome.attempt
    if attempt is not None and attempt.decision is not None and attempt.decision.variant:
        # The variant that failed before the endpoint's fallback variant answered.
        headers.append((b"x-gateway-fallback", attempt.decision.variant.encode("latin-1")))
    if outcome.error is None:
        assert outcome.body is not None
        await _send(send, 200, outcome.body, headers)
    else:
        if outcome.error.status_code == 401:
            headers.append(_CHALLENGE)
        if isinstance(outcome.error, ShedError):
            headers.append((b"retry-after", str(outcome.error.retry_after).encode()))
        body = json.dumps(outcome.error.to_dict()).encode()
        await _send(send, outcome.error.status_code, body, headers)


_ALLOW_POST = [(b"allow", b"POST")]
# RFC 6750: a 401 says which scheme would do.
_CHALLENGE = (b"www-authenticate", b"Bearer")
_CLOSE = (b"connection", b"close")


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers.append((b"content-length", str(len(body)).encode()))
    headers.append((b"content-type", JSON.encode()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: GatewayError, headers: list[tuple[bytes, bytes]]) -> None:
    await _send(send, error.status_code, json.dumps(error.to_dict()).encode(), list(headers))


def _method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError("METHOD_NOT_ALLOWED", f"{method} is not allowed on {path[:200]}.")


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    # json.dumps' default separators, as MLflow's own error bodies have them.
    return Response(json.dumps(content), status_code, headers, media_type=JSON)


def _error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    if error.status_code == 401:
        headers = {**(headers or {}), _CHALLENGE[0].decode(): _CHALLENGE[1].decode()}
    return _json(error.to_dict(), error.status_code, headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = GatewayError("ENDPOINT_NOT_FOUND", f"No route for {request.url.path[:200]}.")
    elif exc.status_code == 405:
        error = _method_not_allowed(request.method, request.url.path)
    else:
        return _json(
            {"error_code": "BAD_REQUEST", "message": exc.detail}, exc.status_code, exc.headers
        )
    return _error_response(error, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    logger.error("unexpected error on %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(internal_error())
