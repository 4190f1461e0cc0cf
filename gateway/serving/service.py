"""One invocation, protocol-agnostic: route it, parse and predict off the loop, account for it once."""

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from functools import partial

from gateway.core.admission import HOLD_SECONDS, Admission
from gateway.core.config import Endpoint, GatewayConfig
from gateway.core.errors import (
    GatewayError,
    ShedError,
    internal_error,
    too_many_in_flight,
    waited_too_long,
)
from gateway.core.routing import Routing, choose_random, choose_sticky
from gateway.observe import metrics
from gateway.observe.quiet import QuietLog
from gateway.protocol import payload
from gateway.serving.accounting import Accountant
from gateway.serving.batching import Batcher
from gateway.serving.inline import TurnBudget
from gateway.serving.outcome import Decision, Invocation, Outcome
from gateway.serving.pool import ModelPool, policy_of
from gateway.serving.prediction import Part, Prediction, predict_by_row, predict_one
from gateway.serving.registry import LoadedModel
from gateway.serving.shadow import ShadowRunner
from gateway.serving.tracing import Tracer

logger = logging.getLogger(__name__)
_QUIET = QuietLog(logger)

FORCE_HEADER = "x-gateway-variant"


class InvocationService:
    """Serves invocations of the configured endpoints from the models in the pool."""

    def __init__(
        self,
        config: GatewayConfig,
        pool: ModelPool,
        executor: Executor,
        accountant: Accountant,
        *,
        shadow: ShadowRunner | None = None,
        rng: random.Random | None = None,
        max_in_flight: int | None = None,
        clock: Callable[[], float] = time.perf_counter,
        tracer: Tracer | None = None,
    ) -> None:
        self._config = config
        self._pool = pool
        self._executor = executor
        self._accountant = accountant
        self._shadow = shadow
        self._batchers: dict[tuple[str, str], tuple[LoadedModel, Batcher | None]] = {}
        # Inline predictions of all batchers share one loop, so one budget per turn of it.
        self._turn_budget = TurnBudget()
        self._rng = rng or random.Random()
        self._metrics = config.metrics.enabled
        # Invocations admitted and not yet answered; past the admission's limit (`max_in_flight`,
        # lowered while the worker is overloaded; None: no limit) a 503.
        self._admitted = 0
        self._admission = Admission(max_in_flight, on_change=self._limit_changed, clock=clock)
        self._limit_changed(max_in_flight)
        self._max_queue = config.max_queue_seconds
        self._standing_queue = config.standing_queue_seconds
        self._clock = clock
        self._tracer = tracer  # None: tracing is off

    def endpoint(self, name: str | None) -> Endpoint:
        """The named endpoint, or the first one for plain `/invocations`; 404 if there is none."""
        if name is None:
            return self._config.endpoints[0]
        endpoint = self._config.endpoint(name)
        if endpoint is None:
            known = ", ".join(endpoint.name for endpoint in self._config.endpoints)
            raise GatewayError(
                "ENDPOINT_NOT_FOUND", f"No endpoint of that name. Endpoints: {known}."
            )
        return endpoint

    def decide(self, endpoint: Endpoint, headers: Mapping[str, str]) -> Decision:
        """Pick the variant for a request: forced, sticky by header, per row, or a weighted draw."""
        # The live weights are replaced whole when they change: this is the split of the decision.
        split = self._pool.weights(endpoint.name)
        forced = headers.get(FORCE_HEADER)
        if forced is not None:
            return Decision(self._forced(endpoint, forced), Routing.FORCED, split)
        sticky = endpoint.sticky
        if sticky is not None and sticky.field is not None:
            return Decision(None, Routing.STICKY, split)
        if sticky is not None and sticky.header is not None:
            user_key = headers.get(sticky.header.lower())
            if user_key:
                variant = choose_sticky(endpoint.name, user_key, split)
                return Decision(variant, Routing.STICKY, split, user_key)
        return Decision(choose_random(split, self._rng), Routing.RANDOM, split)

    def _forced(self, endpoint: Endpoint, forced: str) -> str:
        names = list(endpoint.weights)
        if not endpoint.allow_override:
            raise GatewayError(
                "INVALID_PARAMETER_VALUE",
                f"Endpoint '{endpoint.name}' does not allow choosing a variant with "
                f"the {FORCE_HEADER} header.",
            )
        if forced not in names:
            raise GatewayError(
                "INVALID_PARAMETER_VALUE",
                f"Unknown variant in the {FORCE_HEADER} header; "
                f"endpoint '{endpoint.name}' has: {', '.join(names)}.",
            )
        return forced

    async def invoke(self, invocation: Invocation) -> Outcome:
        """Answer one invocation; whatever happens, the outcome is counted and recorded once."""
        endpoint: Endpoint | None = None
        decision: Decision | None = None
        prediction: Prediction | None = None
        error: GatewayError | None = None
        attempt: Outcome | None = None  # the decided variant's, when the fallback answers instead
        gauge = self._accountant.in_flight(invocation.endpoint)
        self._admitted += 1
        try:
            endpoint = self.endpoint(invocation.endpoint)
            self._admit()
            body_format = payload.parse_media_type(invocation.content_type)
            decision = self.decide(endpoint, invocation.headers)
            try:
                prediction = await self._run(endpoint, decision, body_format, invocation.body)
            except Exception as exc:
                fallback = self._fallback(endpoint, decision, exc)
                if fallback is None:
                    raise
                attempt = self._failed(invocation, endpoint, decision, exc)
                decision = fallback
                prediction = await self._run(endpoint, decision, body_format, invocation.body)
        except GatewayError as exc:
            error = payload.without_echo(exc, invocation.body)
        except asyncio.CancelledError:  # the server stops: still recorded, then cancelled
            cancelled = GatewayError("CLIENT_CLOSED_REQUEST", "Request cancelled.")
            self.refuse(invocation, cancelled, attempt=attempt)
            raise
        except Exception:  # a bug: counted and recorded like any other outcome
            logger.exception("invocation %s failed", invocation.request_id)
            error = internal_error()
        finally:
            gauge.release()
            self._admitted -= 1
        outcome = self._outcome(invocation, endpoint, decision, prediction, error, attempt)
        if self._tracer is not None:
            outcome = self._tracer.trace(outcome)
        self._accountant.record(outcome)
        if prediction is not None and endpoint is not None and endpoint.shadow and self._shadow:
            self._shadow.mirror(outcome, body_format)
        return outcome

    def _outcome(
        self,
        invocation: Invocation,
        endpoint: Endpoint | None,
        decision: Decision | None,
        prediction: Prediction | None,
        error: GatewayError | None,
        attempt: Outcome | None,
    ) -> Outcome:
        """The outcome of an invocation: its prediction's parts, or the parts it was routed to."""
        return Outcome(
            invocation,
            endpoint,
            decision,
            prediction.parts if prediction else self._attempted(endpoint, decision),
            prediction.body if prediction else None,
            error,
            time.perf_counter() - invocation.started,
            attempt,
        )

    def _fallback(self, endpoint: Endpoint, decision: Decision, exc: Exception) -> Decision | None:
        """The decision to answer with the endpoint's fallback variant, if this failure allows one.

        Only a server error (5xx, or a bug) of a variant chosen by the split falls back: a client
        error would fail on any variant, a forced variant was asked for by name, and a request
        routed row by row has no one variant to replace.
        """
        fallback = endpoint.fallback
        if fallback is None or decision.variant in (None, fallback):
            return None
        if decision.routing not in (Routing.STICKY, Routing.RANDOM):
            return None
        if isinstance(exc, GatewayError) and exc.status_code < 500:
            return None
        return Decision(fallback, Routing.FALLBACK, decision.split, decision.user_key)

    def _failed(
        self, invocation: Invocation, endpoint: Endpoint, decision: Decision, exc: Exception
    ) -> Outcome:
        """The outcome of a variant's failed attempt, recorded beside its fallback's."""
        if isinstance(exc, GatewayError):
            error = payload.without_echo(exc, invocation.body)
        else:  # a bug: logged here, then answered by the fallback
            logger.error("invocation %s failed", invocation.request_id, exc_info=exc)
            error = internal_error()
        return self._outcome(invocation, endpoint, decision, None, error, None)

    def refuse_on_arrival(self, name: str | None) -> ShedError | None:
        """The refusal of an invocation whose headers just arrived at a worker already answering
        `max_in_flight` others; None: it may come in.

        The connection answers it at once (`gateway.http.protocol`), without reading it into the
        app: under a flood of callers a refusal must cost next to nothing, or refusing crowds
        out serving. It is counted like any shed request, and leaves no inference record: it was
        never read, and no variant had a part in it.
        """
        if self._admission.admits(self._admitted):
            return None
        if name is not None and self._config.endpoint(name) is None:
            return None  # the app answers 404: a client's mistake is never a 503
        error = self._too_many()
        self._accountant.count_refusal(name, error)
        return error

    def _admit(self) -> None:
        """Shed a request that finds its worker answering as many others as it admits."""
        if not self._admission.admits(self._admitted - 1):
            raise self._too_many()

    def _too_many(self) -> ShedError:
        admission = self._admission
        assert admission.limit is not None
        return too_many_in_flight(admission.limit, lowered=admission.lowered)

    def _overloaded(self, endpoint: str, variant: str, batch_size: int) -> None:
        """A batched variant shed requests for their wait: its worker admits fewer for a while."""
        admission = self._admission
        if admission.overloaded((endpoint, variant), batch_size) and admission.lowered:
            _QUIET.warning(
                "overloaded",
                "overloaded: admitting %s invocations at once (max_in_flight %s) until nothing "
                "is refused for %g s; %s/%s shed requests for their wait",
                admission.limit,
                admission.configured,
                HOLD_SECONDS,
                endpoint,
                variant,
            )

    def _limit_changed(self, limit: int | None) -> None:
        if self._metrics and limit is not None:
            metrics.IN_FLIGHT_LIMIT.set(limit)

    def refuse(
        self, invocation: Invocation, error: GatewayError, *, attempt: Outcome | None = None
    ) -> Outcome:
        """Account for an invocation refused before it could be served (body too large, client gone)."""
        try:
            endpoint: Endpoint | None = self.endpoint(invocation.endpoint)
        except GatewayError:
            endpoint = None
        duration = time.perf_counter() - invocation.started
        outcome = Outcome(invocation, endpoint, None, (), None, error, duration, attempt)
        if self._tracer is not None:
            outcome = self._tracer.trace(outcome)
        self._accountant.record(outcome)
        return outcome

    async def _run(
        self, endpoint: Endpoint, decision: Decision, body_format: payload.Format, body: bytes
    ) -> Prediction:
        """Predict in a worker thread, within the request timeout."""
        queued_at = time.perf_counter()
        if decision.variant is not None:
            model = self._model(endpoint, decision.variant)
            batcher = self._batcher(endpoint, decision.variant, model)
            if batcher is not None:
                return await self._within_timeout(batcher.predict(body_format, body))
            work = partial(predict_one, decision.variant, model, body_format, body, queued_at)
        else:
            assert endpoint.sticky is not None
            assert endpoint.sticky.field is not None
            weights = {name: weight for name, weight in decision.split.items() if weight > 0}
            models = {name: self._model(endpoint, name) for name in weights}
            work = partial(
                predict_by_row,
                endpoint.name,
                endpoint.sticky.field,
                weights,
                models,
                body_format,
                body,
                self._rng,
                queued_at,
            )
        if self._max_queue is not None:
            work = partial(_started_in_time, self._clock, self._clock(), self._max_queue, work)
        loop = asyncio.get_running_loop()
        return await self._within_timeout(loop.run_in_executor(self._executor, work))

    def _batcher(self, endpoint: Endpoint, variant: str, model: LoadedModel) -> Batcher | None:
        """The variant's batcher, or None when its model is not batched (decided once a version)."""
        known = self._batchers.get((endpoint.name, variant))
        if known is not None and known[0] is model:
            return known[1]
        # A swapped version gets a batcher of its own; the old one ends with its last batch.
        settings = policy_of(endpoint, model).settings
        labels = (endpoint.name, variant) if self._metrics else None
        batcher = (
            None
            if settings is None
            else Batcher(
                variant,
                model,
                self._executor,
                settings,
                labels,
                max_queue=self._max_queue,
                standing_queue=self._standing_queue,
                budget=self._turn_budget,
                overloaded=partial(
                    self._overloaded, endpoint.name, variant, settings.max_batch_size
                ),
            )
        )
        self._batchers[(endpoint.name, variant)] = (model, batcher)
        return batcher

    async def _within_timeout(self, work: Awaitable[Prediction]) -> Prediction:
        # asyncio.timeout cancels this task's await on expiry; wait_for would wrap `work` in a
        # task of its own, one more task on the loop for every request.
        try:
            async with asyncio.timeout(self._config.request_timeout_seconds):
                return await work
        except TimeoutError:
            # The thread cannot be interrupted; it finishes and its result is discarded.
            raise GatewayError(
                "DEADLINE_EXCEEDED",
                f"Prediction took longer than {self._config.request_timeout_seconds:g} seconds.",
            ) from None

    def _model(self, endpoint: Endpoint, variant: str) -> LoadedModel:
        model = self._pool.get(endpoint.name, variant)
        if model is None:
            raise GatewayError(
                "TEMPORARILY_UNAVAILABLE",
                f"Endpoint '{endpoint.name}' variant '{variant}' is still loading.",
            )
        return model

    def _attempted(self, endpoint: Endpoint | None, decision: Decision | None) -> tuple[Part, ...]:
        """What a failed request was routed to, for its headers, metrics and log record."""
        if endpoint is None or decision is None or decision.variant is None:
            return ()
        model = self._pool.get(endpoint.name, decision.variant)
        return () if model is None else (Part(decision.variant, model.version.version, 0),)


def _started_in_time(
    clock: Callable[[], float], queued_at: float, limit: float, work: Callable[[], Prediction]
) -> Prediction:
    """Run `work` in the worker thread, unless it waited longer than `limit` seconds for it."""
    if clock() - queued_at > limit:
        raise waited_too_long(limit)
    return work()
