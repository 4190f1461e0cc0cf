"""The HTTP edge: routes, the three exception handlers, and the lifespan that builds the service."""

import asyncio
import dataclasses
import gc
import json
import logging
import random
import re
from collections.abc import AsyncIterator, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mlflow
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway import __version__
from gateway.core.config import Endpoint, GatewayConfig
from gateway.core.errors import GatewayError, internal_error
from gateway.observe import metrics
from gateway.observe.log_writer import InferenceLogWriter
from gateway.serving.pool import ModelPool
from gateway.serving.registry import Registry
from gateway.serving.service import InvocationService
from gateway.serving.shadow import ShadowRunner

logger = logging.getLogger(__name__)

JSON = "application/json"
_MAX_REQUEST_ID = 128


def create_app(
    config: GatewayConfig,
    *,
    registry: Registry | None = None,
    on_fatal: Callable[[], None] | None = None,
    on_ready: Callable[[], None] | None = None,
    peers_ready: Callable[[], bool] | None = None,
    log_writer: InferenceLogWriter | None = None,
    predict_threads: int = 4,
) -> ASGIApp:
    """The gateway's ASGI app; models load in the background once the lifespan starts.

    `on_ready` and `on_fatal` are called when loading succeeds or fails; `peers_ready` tells
    whether the other worker processes of this server are ready too; `log_writer` replaces the
    inference-log writer that the config describes.
    """

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(predict_threads, thread_name_prefix="gateway-predict")
        writer = log_writer if log_writer is not None else _log_writer(config)
        if writer is not None:
            writer.start()
        pool = ModelPool(config, registry or Registry(config.tracking_uri, config.registry_uri))
        # Shadow predictions get threads of their own: they never take one from serving.
        shadow_threads = sum(e.shadow_concurrency for e in config.endpoints if e.shadow)
        shadow_executor = ThreadPoolExecutor(
            max(shadow_threads, 1), thread_name_prefix="gateway-shadow"
        )
        shadow = ShadowRunner(pool, shadow_executor, count=config.metrics.enabled)
        app.state.pool = pool
        app.state.service = InvocationService(
            config, pool, executor, shadow=shadow, log_writer=writer
        )
        loading = asyncio.create_task(_keep_models(config, pool, on_ready, on_fatal))
        try:
            yield
        finally:
            # uvicorn has drained in-flight requests by now: every record is queued.
            loading.cancel()
            await shadow.drain(timeout=10.0)
            shadow_executor.shutdown(wait=True, cancel_futures=True)
            executor.shutdown(wait=True, cancel_futures=False)
            if writer is not None:
                await asyncio.to_thread(writer.close)

    async def metrics_text(request: Request) -> Response:
        # With several workers this reads every worker's files: off the event loop.
        body, content_type = await asyncio.to_thread(
            metrics.exposition, request.headers.get("accept")
        )
        return Response(body, headers={"content-type": content_type})

    async def ping(request: Request) -> Response:
        return Response("\n", media_type=JSON)

    async def health(request: Request) -> Response:
        if not request.app.state.pool.ready:
            raise GatewayError("TEMPORARILY_UNAVAILABLE", "Models are still loading.")
        if peers_ready is not None and not peers_ready():
            raise GatewayError("TEMPORARILY_UNAVAILABLE", "Another worker is still loading models.")
        return Response("\n", media_type=JSON)

    async def version(request: Request) -> Response:
        return _json({"gateway": __version__, "mlflow": mlflow.__version__})

    async def endpoints(request: Request) -> Response:
        pool: ModelPool = request.app.state.pool
        return _json(
            [
                {
                    "name": endpoint.name,
                    "model": endpoint.model,
                    "variants": [dataclasses.asdict(status) for status in pool.describe(endpoint)],
                    "shadow": list(endpoint.shadow),
                    "sticky": endpoint.sticky.model_dump(exclude_none=True)
                    if endpoint.sticky
                    else None,
                    "allow_override": endpoint.allow_override,
                }
                for endpoint in config.endpoints
            ]
        )

    rest = Starlette(
        routes=[
            Route("/ping", ping, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
            Route("/version", version, methods=["GET"]),
            Route("/endpoints", endpoints, methods=["GET"]),
            *([Route("/metrics", metrics_text, methods=["GET"])] if config.metrics.enabled else []),
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
            found = _INVOCATIONS.fullmatch(scope["path"])
            if found is not None:
                await _invoke(rest.state.service, config, scope, receive, send, found["name"])
                return
        await rest(scope, receive, send)

    return app


# `POST /invocations` and `POST /endpoints/{name}/invocations`, as Starlette would match them.
_INVOCATIONS = re.compile(r"/(?:endpoints/(?P<name>[^/]+)/)?invocations")


class _ClientGoneError(Exception):
    """The client disconnected before its request body was read."""


async def _invoke(
    service: InvocationService,
    config: GatewayConfig,
    scope: Scope,
    receive: Receive,
    send: Send,
    endpoint: str | None,
) -> None:
    path = scope["path"]
    if scope["method"] != "POST":
        await _send_error(send, _method_not_allowed(scope["method"], path), _ALLOW_POST)
        return
    headers: dict[str, str] = {}
    for key, value in scope["headers"]:
        # The first of repeated headers, as Starlette's Headers.get gives it.
        headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
    try:
        reply = await service.handle(
            endpoint,
            lambda: _receive_body(receive, headers, config.max_request_bytes),
            headers.get("content-type"),
            headers,
            _request_id(headers.get("x-request-id")),
        )
    except _ClientGoneError:
        return
    except Exception as exc:
        logger.error("unexpected error on POST %s", path, exc_info=exc)
        await _send_error(send, internal_error(), {})
        return
    await _send(send, reply.status_code, reply.body, reply.headers)


_ALLOW_POST = {"allow": "POST"}


async def _send(send: Send, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw = [(key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    raw.append((b"content-type", JSON.encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: GatewayError, headers: Mapping[str, str]) -> None:
    await _send(send, error.status_code, json.dumps(error.to_dict()).encode(), headers)


async def _receive_body(receive: Receive, headers: Mapping[str, str], limit: int) -> bytes:
    declared = headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise GatewayError("PAYLOAD_TOO_LARGE", f"The request body is larger than {limit} bytes.")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise GatewayError(
                "PAYLOAD_TOO_LARGE", f"The request body is larger than {limit} bytes."
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError("METHOD_NOT_ALLOWED", f"{method} is not allowed on {path}.")


async def _keep_models(
    config: GatewayConfig,
    pool: ModelPool,
    on_ready: Callable[[], None] | None,
    on_fatal: Callable[[], None] | None,
) -> None:
    """Load every model, then follow the registry: each endpoint refreshed on its own interval."""
    try:
        await asyncio.to_thread(pool.load_all)
    except Exception as exc:
        logger.error("cannot serve: %s", exc, exc_info=not str(exc))
        if on_fatal is not None:
            on_fatal()
        return
    # What loading left on the heap (MLflow, pandas, the models) will live as long as the process:
    # out of the collector's sight, so full collections stop walking it (long GC pauses = p99).
    gc.collect()
    gc.freeze()
    logger.info("all models loaded; ready")
    if on_ready is not None:
        on_ready()
    await asyncio.gather(*(_refresh_forever(pool, endpoint) for endpoint in config.endpoints))


async def _refresh_forever(pool: ModelPool, endpoint: Endpoint) -> None:
    while True:
        await asyncio.sleep(endpoint.refresh_seconds)
        try:
            await asyncio.to_thread(pool.refresh, endpoint)
        except Exception as exc:  # an unreachable registry: keep serving what is loaded
            logger.warning("refresh of endpoint %s failed, serving on: %s", endpoint.name, exc)


# New request ids: 128 random bits as 32 hex digits, like uuid4().hex, without a system call and
# a UUID object per request. Unique, not secret; seeded from os.urandom in every worker process.
_IDS = random.Random()


def _request_id(given: str | None) -> str:
    if given and len(given) <= _MAX_REQUEST_ID and given.isprintable() and given.isascii():
        return given
    return f"{_IDS.getrandbits(128):032x}"


def _log_writer(config: GatewayConfig) -> InferenceLogWriter | None:
    settings = config.inference_log
    if not settings.enabled:
        return None
    if settings.user_key_secret is None and any(e.sticky for e in config.endpoints):
        logger.warning(
            "inference log: no user_key_secret is set, so records carry no user_key_hash "
            "(set GATEWAY_INFERENCE_LOG__USER_KEY_SECRET)"
        )
    return InferenceLogWriter(
        Path(settings.dir),
        max_queue=settings.max_queue,
        rotate_bytes=settings.rotate_bytes,
        rotate_seconds=settings.rotate_seconds,
        on_drop=metrics.count_log_drop if config.metrics.enabled else None,
    )


def _json(
    content: Any, status_code: int = 200, headers: Mapping[str, str] | None = None
) -> Response:
    # json.dumps' default separators, as MLflow's own error bodies have them.
    return Response(json.dumps(content), status_code, headers, media_type=JSON)


def _error_response(error: GatewayError, headers: Mapping[str, str] | None = None) -> Response:
    return _json(error.to_dict(), error.status_code, headers)


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 404:
        error = GatewayError("ENDPOINT_NOT_FOUND", f"No route for {request.url.path}.")
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
