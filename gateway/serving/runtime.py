"""The composition root: one function builds everything a serving process runs, from the config.

`build_runtime` makes the executors, the registry client, the model pool, the inference-log
writer, the accounting, the shadow runner, the invocation service, with `auth` the token store
and with `tracing` the tracer and its exporter; `Runtime.start` starts the writer, the task that re-reads the tokens file when it changes,
and the background task that loads every model, freezes the heap, then follows the registry;
`Runtime.stop` drains and closes them in order, the last spans and records flushed. The HTTP edge receives a runtime and only routes
to it.
"""

import asyncio
import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from gateway import __version__
from gateway.core.config import Endpoint, GatewayConfig
from gateway.observe import metrics
from gateway.observe.log_writer import DROP_QUEUE_FULL, DROP_WRITE_ERROR, InferenceLogWriter
from gateway.observe.tracing import build_emitter
from gateway.serving.accounting import Accountant
from gateway.serving.auth import TokenStore
from gateway.serving.pool import ModelPool
from gateway.serving.registry import ERROR, REASONS, Registry, RegistryError
from gateway.serving.service import InvocationService
from gateway.serving.shadow import ShadowRunner
from gateway.serving.tracing import Tracer

logger = logging.getLogger(__name__)

PREDICT_THREADS = 4


@dataclass
class Runtime:
    """Everything one serving process runs; built by `build_runtime`, started by the app's lifespan."""

    config: GatewayConfig
    pool: ModelPool
    service: InvocationService
    executor: ThreadPoolExecutor
    shadow_executor: ThreadPoolExecutor
    shadow: ShadowRunner
    writer: InferenceLogWriter | None
    on_ready: Callable[[], None] | None = None
    on_fatal: Callable[[], None] | None = None
    # None: no authentication.
    auth: TokenStore | None = None
    # None: tracing is off.
    tracer: Tracer | None = None
    _loading: "asyncio.Task[None] | None" = field(default=None, init=False)
    _following_tokens: "asyncio.Task[None] | None" = field(default=None, init=False)
    _flushing: "asyncio.Task[None] | None" = field(default=None, init=False)

    async def start(self) -> None:
        """Start the log writer and the token reloads; load the models in the background."""
        if self.writer is not None:
            self.writer.start()
        if self.auth is not None:
            self._following_tokens = asyncio.create_task(self.auth.follow())
        self._loading = asyncio.create_task(self._keep_models())
        if self.config.metrics.enabled:
            self._flushing = asyncio.create_task(self._flush_metrics())

    async def stop(self) -> None:
        """Stop following the registry, finish shadow copies, then flush every record."""
        # The server has drained in-flight requests by now: every record is queued.
        if self._loading is not None:
            self._loading.cancel()
        if self._following_tokens is not None:
            self._following_tokens.cancel()
        await self.shadow.drain(grace_seconds=10.0)
        self.shadow_executor.shutdown(wait=True, cancel_futures=True)
        self.executor.shutdown(wait=True, cancel_futures=False)
        if self._flushing is not None:
            self._flushing.cancel()
            metrics.flush()  # every answered request counted, before the worker's files are final
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.close)
        if self.writer is not None:
            await asyncio.to_thread(self.writer.close)

    async def _flush_metrics(self) -> None:
        """Write the request path's metric updates every FLUSH_SECONDS, and the log's backlog
        (live while records pile up behind a stalled writer, which reports it after each batch)."""
        while True:
            await asyncio.sleep(metrics.FLUSH_SECONDS)
            if self.writer is not None:
                metrics.LOG_QUEUE_DEPTH.set(self.writer.queue_depth())
            metrics.flush()

    async def _keep_models(self) -> None:
        """Load every model, then follow the registry: each endpoint refreshed on its own interval."""
        try:
            await asyncio.to_thread(self.pool.load_all)
        except Exception as exc:
            logger.error("cannot serve: %s", exc, exc_info=not str(exc))
            if self.on_fatal is not None:
                self.on_fatal()
            return
        # What loading left on the heap (MLflow, pandas, the models) lives as long as the
        # process: out of the collector's sight, full collections stop walking it (p99).
        gc.collect()
        gc.freeze()
        logger.info("all models loaded; ready")
        if self.on_ready is not None:
            self.on_ready()
        await asyncio.gather(*(self._refresh_forever(e) for e in self.config.endpoints))

    async def _refresh_forever(self, endpoint: Endpoint) -> None:
        """Refresh one endpoint forever; every failure counted, each streak logged once."""
        counters = {
            reason: metrics.REFRESH_FAILURES.labels(endpoint.name, reason) for reason in REASONS
        }
        # Exported at 0 before any failure: Prometheus sees no increase in a counter series that
        # first appears at 1, so an alert on increase() would miss each variant's first failure.
        for variant in (*endpoint.variants, *endpoint.shadow_variants):
            metrics.MODEL_LOAD_FAILURES.labels(endpoint.name, variant.variant_name)
        failing: str | None = None  # the reason of the streak of failures going on, if any
        streak = 0
        while True:
            await asyncio.sleep(endpoint.refresh_seconds)
            try:
                await asyncio.to_thread(self.pool.refresh, endpoint)
            except Exception as exc:  # an unreachable registry: keep serving what is loaded
                reason = exc.reason if isinstance(exc, RegistryError) else ERROR
                counters[reason].inc()
                streak += 1
                if reason != failing:
                    logger.warning(
                        "refresh of endpoint %s failed (%s), serving on; "
                        "logged again when it recovers or fails otherwise: %s",
                        endpoint.name,
                        reason,
                        exc,
                        exc_info=not isinstance(exc, RegistryError),
                    )
                    failing = reason
                else:
                    logger.debug("refresh of endpoint %s failed again: %s", endpoint.name, exc)
                continue
            if failing is not None:
                logger.warning(
                    "refresh of endpoint %s recovered after %d failed refresh(es)",
                    endpoint.name,
                    streak,
                )
            failing, streak = None, 0


def build_runtime(
    config: GatewayConfig,
    *,
    registry: Registry | None = None,
    log_writer: InferenceLogWriter | None = None,
    predict_threads: int = PREDICT_THREADS,
    on_ready: Callable[[], None] | None = None,
    on_fatal: Callable[[], None] | None = None,
) -> Runtime:
    """The runtime of one serving process; `log_writer` replaces the one the config describes.

    Raises ConfigError when `auth` is set and its tokens file cannot be used.
    """
    auth = TokenStore(config.auth.tokens_file) if config.auth is not None else None
    executor = ThreadPoolExecutor(predict_threads, thread_name_prefix="gateway-predict")
    writer = log_writer if log_writer is not None else _log_writer(config)
    pool = ModelPool(config, registry or Registry(config.tracking_uri, config.registry_uri))
    accountant = Accountant(config, writer)
    # Shadow predictions get threads of their own: they never take one from serving.
    shadow_threads = sum(e.shadow_concurrency for e in config.endpoints if e.shadow)
    shadow_executor = ThreadPoolExecutor(
        max(shadow_threads, 1), thread_name_prefix="gateway-shadow"
    )
    shadow = ShadowRunner(pool, shadow_executor, accountant, count=config.metrics.enabled)
    emitter = build_emitter(config.tracing, __version__) if config.tracing.enabled else None
    tracer = Tracer(emitter) if emitter is not None else None
    service = InvocationService(
        config,
        pool,
        executor,
        accountant,
        shadow=shadow,
        max_in_flight=config.in_flight_limit(predict_threads),
        tracer=tracer,
    )
    return Runtime(
        config,
        pool,
        service,
        executor,
        shadow_executor,
        shadow,
        writer,
        on_ready,
        on_fatal,
        auth=auth,
        tracer=tracer,
    )


def _log_writer(config: GatewayConfig) -> InferenceLogWriter | None:
    settings = config.inference_log
    if not settings.enabled:
        return None
    if settings.user_key_secret is None and any(e.sticky for e in config.endpoints):
        logger.warning(
            "inference log: no user_key_secret is set, so records carry no user_key_hash "
            "(set GATEWAY_INFERENCE_LOG__USER_KEY_SECRET)"
        )
    if config.metrics.enabled:
        # At 0 from the start: the first records lost must be an increase to Prometheus.
        for reason in (DROP_QUEUE_FULL, DROP_WRITE_ERROR):
            metrics.LOG_DROPPED.labels(reason)
    return InferenceLogWriter(
        Path(settings.dir),
        max_queue=settings.max_queue,
        rotate_bytes=settings.rotate_bytes,
        rotate_seconds=settings.rotate_seconds,
        on_drop=metrics.count_log_drop if config.metrics.enabled else None,
        on_depth=metrics.LOG_QUEUE_DEPTH.set if config.metrics.enabled else None,
    )
