"""Adaptive batching: concurrent requests for one model version merged into one `predict` call.

Requests that arrive while a batch of their version is being predicted queue up and go together
in the next one (up to `max_batch_size` requests and as many rows). A request that arrives when
the batcher has been idle for more than `max_wait_ms` is predicted at once: a request alone never
waits. Under load, when the last batch was answered less than `max_wait_ms` ago, a new batch
waits at most `max_wait_ms` until it is as large as that last batch. Concurrent clients answered
together send their next requests a few hundred microseconds apart; without that wait the first
of them would go alone and the rest together, two `predict` calls where one does.

A batch is one hand-off to a worker thread, which runs `gateway.serving.merge.predict_batch`:
this module is the scheduler on the event loop, that one the merge and split. The requests of a
batch that waited longer than `max_queue_ms` when it is handed off are answered 503 instead.

Under a standing queue the limit is shorter. A queue that drains at each batch, every request
waiting taken by the next one, is a queue that batching needs: requests that came while a batch
ran. One found holding more than a batch at every batch for `STANDING_INTERVAL` means more
arrives than the version answers, and then waiting longer only adds latency, never throughput.
The interval starts at the first batch that leaves requests behind, not at the last drain: a
backlog left by one long batch (a stall, a slow call) that the next few batches clear is a
burst, and is served. While a standing queue lasts, a request
may wait one batch's run (the last one's) plus `standing_queue_ms` for its predict to start; the
others are answered 503 at once. This is the controlled-delay rule of CoDel and of Facebook's
RPC queues ("Fail at Scale", ACM Queue, 2015): the queue's minimum over an interval, not its
length, tells a standing queue from a burst. The served requests of an overloaded worker keep
a latency near the unloaded one, while a busy one that keeps up (its queue drains at each batch)
refuses nothing. A version that sheds for queue time also lowers its worker's in-flight limit,
for as long as the worker goes on refusing (`gateway.core.admission`).

A batch of one request of a fast version skips the hand-off and is predicted on the loop (in
the callback that takes the batch, so requests read in one turn still share a batch, and under
load requests still wait for company), when `gateway.core.inline_policy` allows it:
the version's measured time for a lone request (a moving estimate, seeded by calls measured in
worker threads) is at most `inline_max_ms` (1 ms), its body is small, and this turn of the loop
has time left. An inline call slower than that sends the version back to worker threads at
once, until threaded calls measure it fast again: a slow model never runs on the loop, and one
that turns slow holds it for one call.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field

from gateway.core.config import Batching
from gateway.core.errors import GatewayError, internal_error, waited_too_long
from gateway.core.inline_policy import PredictEstimate, may_inline
from gateway.observe import metrics
from gateway.protocol import payload
from gateway.serving.inline import TurnBudget, timed
from gateway.serving.merge import Queued, predict_batch
from gateway.serving.prediction import Prediction
from gateway.serving.registry import LoadedModel

logger = logging.getLogger(__name__)

_Answers = list[Prediction | GatewayError]
# A queue that every batch has left requests behind in for this long is a standing queue.
STANDING_INTERVAL = 0.1


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


@dataclass
class _Waiting:
    request: Queued
    future: "asyncio.Future[Prediction]"
    # When it was queued, on the loop's clock: a request that waited past `max_queue` is shed.
    since: float = field(default_factory=_loop_time)


class Batcher:
    """Merges concurrent predictions of one model version; lives on the event loop."""

    def __init__(
        self,
        variant: str,
        model: LoadedModel,
        executor: Executor,
        settings: Batching,
        labels: tuple[str, str] | None = None,
        *,
        max_queue: float | None = None,
        standing_queue: float | None = None,
        budget: TurnBudget | None = None,
        overloaded: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.variant = variant
        self.model = model
        # (endpoint, variant) for the queue-depth and batch-size metrics; None: not counted.
        self._queue_gauge = metrics.level(metrics.BATCH_QUEUE, *labels) if labels else None
        self._observe_rows = metrics.BATCH_ROWS.labels(*labels).observe if labels else None
        self._executor = executor
        self._max_size = settings.max_batch_size
        self._max_wait = settings.max_wait_ms / 1000
        self._waiting: deque[_Waiting] = deque()
        self._running = False
        # The last batch answered: its size and the loop's time then.
        self._last_size = 0
        self._last_end = -math.inf
        # A batch waiting to reach `_target` requests, and the timer that ends its wait.
        self._held: list[_Waiting] | None = None
        self._target = 0
        self._timer: asyncio.TimerHandle | None = None
        # Seconds a request may wait for its batch to start; None: no limit.
        self._max_queue = max_queue
        # Under a standing queue: seconds a request may wait beyond the last batch's run.
        self._standing_queue = standing_queue
        # Since when every batch has left requests behind (None: the last one took them all),
        # and how long the last batch handed off took from its hand-off to its answers, on the
        # loop's clock.
        self._backlog_since: float | None = None
        self._last_run = 0.0
        self._handed_off = 0.0
        # Whether a lone request may skip the hand-off: what its version's calls measured.
        self._estimate = PredictEstimate(bound=settings.inline_max_ms / 1000)
        self._budget = budget if budget is not None else TurnBudget()
        # Told whenever requests are shed for their wait (`gateway.core.admission`).
        self._overloaded = overloaded
        self._clock = clock

    async def predict(self, body_format: payload.Format, body: bytes) -> Prediction:
        """One request's predictions, computed with whatever it can be merged with."""
        loop = asyncio.get_running_loop()
        queued = Queued(body_format, body, time.perf_counter())
        waiting = _Waiting(queued, loop.create_future())
        self._waiting.append(waiting)
        if self._queue_gauge is not None:
            self._queue_gauge.add(1)
        if not self._running:
            self._running = True
            loop.call_soon(self._next, loop)
        elif self._held is not None and len(self._held) + len(self._waiting) >= self._target:
            self._release(loop)
        return await waiting.future

    # A batch is driven by callbacks on the loop, not by a task: no task to create and step
    # through for each batch, and no asyncio future wrapping the thread's. A batch is taken with
    # call_soon, once the requests that reached the loop together have all been queued: a request
    # alone waits for no one, and requests read in the same turn of the loop share a batch
    # instead of the first going alone.

    def _queue_limit(self, now: float) -> tuple[float, str] | None:
        """How long a request may wait for its batch to start now, and the setting that says
        so; None: at will."""
        limit = None if self._max_queue is None else (self._max_queue, "max_queue_ms")
        since = self._backlog_since
        if self._standing_queue is None or since is None or now - since <= STANDING_INTERVAL:
            return limit
        standing = self._last_run + self._standing_queue
        if limit is not None and limit[0] <= standing:
            return limit
        return standing, "standing_queue_ms"

    def _next(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next batch, or stop when nobody is waiting."""
        now = loop.time()
        if len(self._waiting) <= self._max_size:  # the next batch takes them all: drained
            self._backlog_since = None
        elif self._backlog_since is None:
            self._backlog_since = now
        limit = self._queue_limit(now)
        if limit is not None:
            self._shed_stale(now - limit[0], limit)
        if not self._waiting:
            self._running = False
            return
        batch = self._take([])
        under_load = self._max_wait > 0 and loop.time() - self._last_end <= self._max_wait
        target = min(self._last_size, self._max_size) if under_load else 1
        if len(batch) < target:
            self._held, self._target = batch, target
            self._timer = loop.call_later(self._max_wait, self._release, loop)
        elif len(batch) == 1 and self._inline_allowed(batch[0].request):
            self._predict_inline(loop, batch)
        else:
            self._submit(loop, batch)

    def _inline_allowed(self, request: Queued) -> bool:
        """Whether a lone request may be predicted on the loop (gateway.core.inline_policy)."""
        return may_inline(self._estimate, len(request.body), self._budget.spent)

    def _predict_inline(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        """Predict a lone request on the loop, learn from the time it took, and answer it."""
        if self._queue_gauge is not None:
            self._queue_gauge.add(-1)
        started = self._clock()
        try:
            results = predict_batch(
                self.variant, self.model, [batch[0].request], self._max_size, self._observe_rows
            )
            if len(results) != 1:
                raise RuntimeError(f"{len(results)} answers to one request")
        except Exception:  # a bug: this request fails, serving goes on
            logger.exception("a request predicted on the loop failed")
            results = [internal_error()]
        seconds = self._clock() - started
        self._estimate.observe(seconds, inline=True)
        self._budget.spend(loop, seconds)
        self._answer(loop, batch, results)

    def _release(self, loop: asyncio.AbstractEventLoop) -> None:
        """End a held batch's wait: it reached its size, or its time is up."""
        held, self._held = self._held, None
        if held is None:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._submit(loop, self._take(held))

    def _submit(self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting]) -> None:
        if self._queue_gauge is not None:
            self._queue_gauge.add(-len(batch))
        now = loop.time()
        limit = self._queue_limit(now)
        if limit is not None:
            batch = self._shed_late(now - limit[0], limit, batch)
            if not batch:
                loop.call_soon(self._next, loop)
                return
        self._handed_off = now
        requests = [waiting.request for waiting in batch]
        try:
            done = self._executor.submit(
                timed,
                self._clock,
                predict_batch,
                self.variant,
                self.model,
                requests,
                self._max_size,
                self._observe_rows,
            )
        except RuntimeError:  # the executor is shut down: the gateway is stopping
            self._finish(loop, batch, None)
            return

        def answer(done: "Future[tuple[_Answers, float]]") -> None:
            # Runs on the worker thread; a loop that is closed has nobody left to answer.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._finish, loop, batch, done)

        done.add_done_callback(answer)

    def _shed_stale(self, queued_by: float, limit: tuple[float, str]) -> None:
        """Answer every request queued before `queued_by` with a 503, all in this turn.

        The queue is in arrival order, so they are at its head. Shed a batch at a time instead,
        an overloaded worker would spend a turn of its loop on each batch of late requests
        while the requests behind them grow late too.
        """
        stale = 0
        while self._waiting and self._waiting[0].since < queued_by:
            waiting = self._waiting.popleft()
            stale += 1
            if not waiting.future.done():
                waiting.future.set_exception(waited_too_long(*limit))
        if stale:
            if self._queue_gauge is not None:
                self._queue_gauge.add(-stale)
            if self._overloaded is not None:
                self._overloaded()

    def _shed_late(
        self, queued_by: float, limit: tuple[float, str], batch: list[_Waiting]
    ) -> list[_Waiting]:
        """Answer the requests queued before `queued_by` with a 503; the others go on."""
        if batch[0].since >= queued_by:  # the oldest is in time: so are the others
            return batch
        on_time = []
        for waiting in batch:
            if waiting.since >= queued_by:
                on_time.append(waiting)
            elif not waiting.future.done():
                waiting.future.set_exception(waited_too_long(*limit))
        if self._overloaded is not None:
            self._overloaded()
        return on_time

    def _finish(
        self,
        loop: asyncio.AbstractEventLoop,
        batch: list[_Waiting],
        done: "Future[tuple[_Answers, float]] | None",
    ) -> None:
        """Answer each request of a batch from its thread's result, then start the next one."""
        self._last_run = loop.time() - self._handed_off
        if done is None:
            results: _Answers = [internal_error()] * len(batch)
        else:
            try:
                results, seconds = done.result()
                if len(batch) == 1:  # what a lone request costs: the estimate's measure
                    self._estimate.observe(seconds, inline=False)
                if len(results) != len(batch):
                    raise RuntimeError(f"{len(results)} answers to {len(batch)} requests")
            except Exception:  # a bug: never leave a request waiting
                logger.exception("a batch of %d requests failed", len(batch))
                results = [internal_error()] * len(batch)
        self._answer(loop, batch, results)

    def _answer(
        self, loop: asyncio.AbstractEventLoop, batch: list[_Waiting], results: _Answers
    ) -> None:
        """Answer each request of a batch, then start the next one."""
        self._last_size, self._last_end = len(batch), loop.time()
        try:
            for waiting, result in zip(batch, results, strict=True):
                if waiting.future.done():  # its request timed out or its client left
                    continue
                if isinstance(result, GatewayError):
                    waiting.future.set_exception(result)
                else:
                    waiting.future.set_result(result)
        finally:
            loop.call_soon(self._next, loop)

    def _take(self, batch: list[_Waiting]) -> list[_Waiting]:
        while self._waiting and len(batch) < self._max_size:
            batch.append(self._waiting.popleft())
        return batch
