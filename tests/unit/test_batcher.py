"""The batch scheduler on an event loop whose clock only the test moves, with batches it ends.

Nothing here waits for real time. The loop's `time()` is a fake clock: it judges "under load"
and it runs the hold timer, so a held batch is released when the test moves the clock past
`max_wait_ms`, in the same turn as it would be on a real loop. Every batch ends when the test
completes the future the executor returned for it.
"""

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest

from gateway.core.config import Batching
from gateway.core.errors import GatewayError, ShedError
from gateway.core.inline_policy import (
    INLINE_AFTER_CALLS,
    INLINE_BOUND_SECONDS,
    INLINE_MAX_BODY_BYTES,
)
from gateway.protocol.payload import Format
from gateway.serving.batching import Batcher
from gateway.serving.inline import timed
from gateway.serving.merge import Queued, predict_batch
from gateway.serving.prediction import Prediction
from gateway.serving.registry import LoadedModel
from tests.helpers import FakeClock, FakePyfunc, ManualExecutor, fake_model

MODEL = fake_model(FakePyfunc())
TURNS = 10  # turns of the loop that let every ready callback and task run
# A threaded batch's measured time that never makes a version fast enough for the loop.
SLOW = 1.0


class ClockedLoop(asyncio.SelectorEventLoop):
    """An event loop whose time, and so whose timers, follow a fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock

    def time(self) -> float:
        """The fake clock's time."""
        return self.clock()


class Harness:
    """A Batcher whose batches the test ends, with requests named by one letter each."""

    def __init__(
        self,
        settings: Batching,
        clock: FakeClock,
        model: LoadedModel = MODEL,
        body: Callable[[str], bytes] = str.encode,
        max_queue: float | None = None,
        standing_queue: float | None = None,
    ) -> None:
        self.clock = clock
        self.executor = ManualExecutor()
        # How many times the batcher told its worker it shed requests for their wait.
        self.overloads = 0
        self.batcher = Batcher(
            "champion",
            model,
            self.executor,
            settings,
            clock=clock,
            max_queue=max_queue,
            standing_queue=standing_queue,
            overloaded=self._overloaded,
        )
        self.body = body
        self.names: dict[bytes, str] = {}
        self.requests: dict[str, asyncio.Task[Prediction]] = {}
        self.ended = 0
        self.loop_errors: list[dict[str, Any]] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _, context: self.loop_errors.append(context)
        )

    def _overloaded(self) -> None:
        self.overloads += 1

    async def settle(self) -> None:
        """Let the loop run everything that is ready, due timers included."""
        for _ in range(TURNS):
            await asyncio.sleep(0)

    async def arrive(self, names: str) -> None:
        """Requests, one a letter, all read in the same turn of the loop."""
        for name in names:
            body = self.body(name)
            self.names[body] = name
            self.requests[name] = asyncio.create_task(self.batcher.predict(Format.JSON, body))
        await self.settle()

    async def tick(self, milliseconds: float) -> None:
        """Move the clock on, and let whatever is due run."""
        self.clock.now += milliseconds / 1000
        await self.settle()

    def batch(self, index: int) -> list[Queued]:
        """The requests of a submitted batch."""
        requests: list[Queued] = batch_call(self.executor, index)[2]
        return requests

    def batches(self) -> str:
        """The batches submitted so far, as letters: `"a bcd"`."""
        return " ".join(
            "".join(self.names[request.body] for request in self.batch(index))
            for index in range(len(self.executor.submitted))
        )

    async def end(
        self, answers: Callable[[list[Queued]], Any] | None = None, seconds: float = SLOW
    ) -> None:
        """End the oldest running batch, measured at `seconds`: each request answered with its
        own name by default."""
        requests = self.batch(self.ended)
        future = self.executor.futures[self.ended]
        self.ended += 1
        if answers is None:
            future.set_result(([Prediction(request.body, ()) for request in requests], seconds))
        else:
            result = answers(requests)
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result((result, seconds))
        await self.settle()

    def answered(self) -> set[str]:
        """The requests that have their answer (or error) already."""
        return {name for name, task in self.requests.items() if task.done()}

    async def step(self, action: str) -> None:
        """`+abc`: requests a, b, c arrive; `end`: the oldest batch ends; `tick 5`: 5 ms pass."""
        if action.startswith("+"):
            await self.arrive(action[1:])
        elif action == "end":
            await self.end()
        else:
            verb, milliseconds = action.split()
            assert verb == "tick"
            await self.tick(float(milliseconds))


def batch_call(executor: ManualExecutor, index: int) -> tuple[Any, ...]:
    """The arguments of `predict_batch` in a submitted batch, which is timed in its thread."""
    function, args = executor.submitted[index]
    assert function is timed
    assert args[1] is predict_batch
    return args[2:]


def run(
    settings: Batching,
    script: Callable[[Harness], Awaitable[None]],
    make_model: Callable[[FakeClock], LoadedModel] | None = None,
    body: Callable[[str], bytes] = str.encode,
    max_queue: float | None = None,
    standing_queue: float | None = None,
) -> None:
    """Run a test's script against a fresh Batcher on a fresh clocked loop."""
    clock = FakeClock()
    model = MODEL if make_model is None else make_model(clock)

    async def main() -> None:
        await script(Harness(settings, clock, model, body, max_queue, standing_queue))

    with asyncio.Runner(loop_factory=lambda: ClockedLoop(clock)) as runner:
        runner.run(main())


# Three requests were answered together just now: the state "under load" starts from.
UNDER_LOAD = [("+a", "a"), ("+bcd", "a"), ("end", "a bcd"), ("end", "a bcd")]

# (settings, steps: each an action and the batches submitted after it)
SCHEDULES: dict[str, tuple[Batching, list[tuple[str, str]]]] = {
    "a lone request is submitted at once": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [("+a", "a"), ("end", "a")],
    ),
    "requests read in the same turn share the first batch": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [("+abc", "abc"), ("end", "abc")],
    ),
    "requests arriving while a batch runs go together in the next": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [("+a", "a"), ("+b", "a"), ("+c", "a"), ("end", "a bc"), ("end", "a bc")],
    ),
    "the next batch takes at most max_batch_size requests": (
        Batching(max_batch_size=2, max_wait_ms=0),
        [("+a", "a"), ("+bcde", "a"), ("end", "a bc"), ("end", "a bc de"), ("end", "a bc de")],
    ),
    "under load a batch is held until it is as large as the last one": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [
            *UNDER_LOAD,
            ("tick 5", "a bcd"),
            ("+e", "a bcd"),
            ("+f", "a bcd"),
            ("+g", "a bcd efg"),
            ("end", "a bcd efg"),
        ],
    ),
    "a held batch goes with the request that completes it, the rest wait for the next": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [
            *UNDER_LOAD,
            ("+e", "a bcd"),
            ("+fgh", "a bcd efg"),
            ("end", "a bcd efg"),  # h is held in turn, for two more
            ("tick 10", "a bcd efg h"),
            ("end", "a bcd efg h"),
        ],
    ),
    "a batch answered exactly max_wait_ms ago still counts as load": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [
            *UNDER_LOAD,
            ("tick 10", "a bcd"),
            ("+e", "a bcd"),
            ("+fg", "a bcd efg"),
            ("end", "a bcd efg"),
        ],
    ),
    "after a full batch the next one is held until it is full too": (
        Batching(max_batch_size=2, max_wait_ms=10),
        [
            ("+a", "a"),
            ("+bcd", "a"),
            ("end", "a bc"),
            ("end", "a bc"),  # d is held: the last batch had two requests
            ("+e", "a bc de"),
            ("end", "a bc de"),
        ],
    ),
    "a held batch goes alone when max_wait_ms has passed": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [
            *UNDER_LOAD,
            ("+e", "a bcd"),
            ("tick 9", "a bcd"),
            ("tick 1", "a bcd e"),
            ("end", "a bcd e"),
        ],
    ),
    "after an idle spell longer than max_wait_ms a request is not held": (
        Batching(max_batch_size=64, max_wait_ms=10),
        [*UNDER_LOAD, ("tick 10.5", "a bcd"), ("+e", "a bcd e"), ("end", "a bcd e")],
    ),
    "max_wait_ms 0 never holds a request": (
        Batching(max_batch_size=64, max_wait_ms=0),
        [
            *UNDER_LOAD,
            ("+e", "a bcd e"),
            ("+f", "a bcd e"),
            ("end", "a bcd e f"),
            ("end", "a bcd e f"),
        ],
    ),
}


@pytest.mark.parametrize(("settings", "steps"), list(SCHEDULES.values()), ids=list(SCHEDULES))
def test_requests_are_batched_on_this_schedule_and_each_gets_its_own_answer(
    settings: Batching, steps: list[tuple[str, str]]
) -> None:
    async def script(harness: Harness) -> None:
        for action, batches in steps:
            await harness.step(action)
            assert harness.batches() == batches, f"after {action!r}"
        assert harness.answered() == set(harness.requests)
        assert {name: (await task).body for name, task in harness.requests.items()} == {
            name: name.encode() for name in harness.requests
        }
        assert harness.loop_errors == []

    run(settings, script)


def test_a_batch_is_one_predict_batch_call_with_the_model_and_max_batch_size() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("ab")
        assert len(harness.executor.submitted) == 1
        args = batch_call(harness.executor, 0)
        assert args[0:2] == ("champion", MODEL)
        assert [request.body for request in args[2]] == [b"a", b"b"]
        assert args[3] == 7
        await harness.end()

    run(Batching(max_batch_size=7, max_wait_ms=10), script)


def failed(requests: list[Queued]) -> BaseException:
    """The worker thread raised: a bug in the batch."""
    return RuntimeError("the batch failed")


def one_answer_short(requests: list[Queued]) -> list[Prediction]:
    """Fewer answers than requests: a bug in the merge."""
    return [Prediction(request.body, ()) for request in requests[1:]]


async def internal_errors(harness: Harness, names: str) -> None:
    """Each named request was answered with an internal error."""
    for name in names:
        with pytest.raises(GatewayError) as caught:
            await harness.requests[name]
        assert caught.value.error_code == "INTERNAL_ERROR"


@pytest.mark.parametrize("answers", [failed, one_answer_short], ids=["raised", "answers missing"])
def test_a_failed_batch_answers_each_of_its_requests_with_an_internal_error_and_serving_goes_on(
    answers: Callable[[list[Queued]], Any], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("ab")
        await harness.end(answers)
        assert harness.answered() == {"a", "b"}
        await internal_errors(harness, "ab")
        await harness.arrive("c")
        assert harness.batches() == "ab c"
        await harness.end()
        assert (await harness.requests["c"]).body == b"c"
        assert harness.loop_errors == []

    run(Batching(max_batch_size=64, max_wait_ms=0), script)
    assert "a batch of 2 requests failed" in caplog.text


def test_a_shut_down_executor_answers_each_waiting_request_with_an_internal_error() -> None:
    async def script(harness: Harness) -> None:
        harness.executor.shut = True
        await harness.arrive("ab")
        assert harness.batches() == ""
        assert harness.answered() == {"a", "b"}
        await internal_errors(harness, "ab")
        # The batcher is not stuck: an executor that takes work again gets the next request.
        harness.executor.shut = False
        await harness.arrive("c")
        assert harness.batches() == "c"
        await harness.end()
        assert (await harness.requests["c"]).body == b"c"
        assert harness.loop_errors == []

    run(Batching(max_batch_size=64, max_wait_ms=0), script)


def test_an_error_for_one_request_of_a_batch_is_that_request_s_alone() -> None:
    refused = GatewayError("BAD_REQUEST", "bad rows")

    async def script(harness: Harness) -> None:
        await harness.arrive("abc")
        await harness.end(
            lambda requests: [
                refused if request.body == b"b" else Prediction(request.body, ())
                for request in requests
            ]
        )
        assert (await harness.requests["a"]).body == b"a"
        with pytest.raises(GatewayError) as caught:
            await harness.requests["b"]
        assert caught.value is refused
        assert (await harness.requests["c"]).body == b"c"

    run(Batching(max_batch_size=64, max_wait_ms=0), script)


def test_a_request_cancelled_while_it_waits_is_skipped_without_error() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("bc")
        harness.requests["b"].cancel()  # its request timed out, or its client left
        await harness.settle()
        await harness.end()
        assert harness.batches() == "a bc"
        await harness.end()
        assert harness.requests["b"].cancelled()
        assert harness.answered() == {"a", "b", "c"}
        assert harness.loop_errors == []
        assert (await harness.requests["c"]).body == b"c"
        await harness.arrive("d")
        assert harness.batches() == "a bc d"
        await harness.end()
        assert (await harness.requests["d"]).body == b"d"
        assert harness.loop_errors == []

    run(Batching(max_batch_size=64, max_wait_ms=0), script)


async def shed(
    harness: Harness, names: str, limit: str = "1000 ms", setting: str = "max_queue_ms"
) -> None:
    """Each named request was answered 503: it waited longer than `limit` for its batch."""
    for name in names:
        with pytest.raises(ShedError) as caught:
            await harness.requests[name]
        assert (caught.value.status_code, caught.value.reason) == (503, "queue_time")
        assert caught.value.retry_after == 1
        assert f"more than {limit} for its prediction to start ({setting})" in (
            caught.value.message
        )


def test_requests_that_waited_past_max_queue_are_answered_503_and_the_rest_predicted() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("bc")  # they queue behind a's batch ...
        await harness.tick(1000.5)  # ... for longer than max_queue
        await harness.arrive("d")
        await harness.end()
        assert harness.batches() == "a d"
        await shed(harness, "bc")
        assert harness.overloads == 1  # a shed for max_queue_ms tells the worker too
        await harness.end()
        assert (await harness.requests["d"]).body == b"d"
        assert harness.loop_errors == []

    run(Batching(max_batch_size=64, max_wait_ms=0), script, max_queue=1.0)


def test_a_request_that_waited_exactly_max_queue_is_still_predicted() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("b")
        await harness.tick(1000)
        await harness.end()
        assert harness.batches() == "a b"
        await harness.end()
        assert (await harness.requests["b"]).body == b"b"

    run(Batching(max_batch_size=64, max_wait_ms=0), script, max_queue=1.0)


def test_a_batch_whose_requests_all_waited_too_long_is_not_submitted_and_batching_goes_on() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("bcd")
        await harness.tick(2000)
        await harness.end()
        assert harness.batches() == "a"
        await shed(harness, "bcd")
        await harness.arrive("e")  # the batcher is idle again: e goes at once
        assert harness.batches() == "a e"
        await harness.end()
        assert (await harness.requests["e"]).body == b"e"
        assert harness.loop_errors == []

    run(Batching(max_batch_size=2, max_wait_ms=0), script, max_queue=1.0)


def test_a_queue_that_drains_at_each_batch_refuses_nothing_however_long_it_waits() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        for pair in ("bc", "de", "fg", "hi", "jk"):  # each pair waits 60 ms for the batch
            await harness.arrive(pair)  # before it, then the next batch takes both
            await harness.tick(60)
            await harness.end()
        assert harness.batches() == "a bc de fg hi jk"
        await harness.end()
        assert all(task.done() and not task.exception() for task in harness.requests.values())
        assert harness.overloads == 0  # its worker keeps admitting all it may

    run(Batching(max_batch_size=2, max_wait_ms=0), script, max_queue=1.0, standing_queue=0.01)


def test_a_standing_queue_sheds_what_waited_longer_than_a_batch_and_standing_queue_ms() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("bcdefgh")  # more than a batch waits behind a
        await harness.tick(60)
        await harness.end()  # a took 60 ms; bc go and leave defgh: the backlog starts now
        await harness.arrive("ijk")
        await harness.tick(60)
        await harness.end()  # a backlog seen for 60 ms is not yet a standing queue: de go
        await harness.arrive("lm")
        await harness.tick(60)
        # A backlog at every batch for 120 ms: a request may wait de's run (60 ms) + 10 ms.
        # fgh waited 180 ms and ijk 120 ms, and are refused; lm waited 60 ms and go on.
        assert harness.overloads == 0
        await harness.end()
        assert harness.batches() == "a bc de lm"
        await shed(harness, "fghijk", "70 ms", "standing_queue_ms")
        assert harness.overloads == 1  # its worker is told once for the six shed together
        await harness.arrive("nop")  # while lm run: more than a batch again
        await harness.tick(90)
        await harness.end()  # lm drained the queue: a new backlog, 0 ms old, sheds nothing
        assert harness.batches() == "a bc de lm no"
        await harness.end()
        await harness.end()
        assert all(not harness.requests[name].exception() for name in "lmnop")

    run(Batching(max_batch_size=2, max_wait_ms=0), script, max_queue=1.0, standing_queue=0.01)


def test_a_backlog_left_by_one_long_batch_is_served_when_the_next_batches_clear_it() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("bcdefg")  # three batches' worth queue behind a ...
        await harness.tick(300)  # ... which stalls for 300 ms (a slow call, a pause)
        await harness.end()
        for _ in range(3):  # then the version is fast again: 1 ms a batch
            await harness.tick(1)
            await harness.end()
        assert harness.batches() == "a bc de fg"
        assert all(not task.exception() for task in harness.requests.values())
        assert harness.overloads == 0

    run(Batching(max_batch_size=2, max_wait_ms=0), script, max_queue=1.0, standing_queue=0.01)


def test_without_max_queue_a_request_waits_as_long_as_it_takes() -> None:
    async def script(harness: Harness) -> None:
        await harness.arrive("a")
        await harness.arrive("b")
        await harness.tick(3_600_000)
        await harness.end()
        assert harness.batches() == "a b"
        await harness.end()
        assert (await harness.requests["b"]).body == b"b"

    run(Batching(max_batch_size=64, max_wait_ms=0), script)


# A lone request on the loop: the rule of gateway.core.inline_policy, applied by the Batcher.

FAST = INLINE_BOUND_SECONDS / 4
INLINE = Batching(max_batch_size=64, max_wait_ms=0)


@dataclass
class ClockedPyfunc(FakePyfunc):
    """A FakePyfunc whose every call takes `seconds` of the fake clock."""

    clock: FakeClock = field(default_factory=FakeClock)
    seconds: float = 0.0

    def predict(self, data: pd.DataFrame, params: dict[str, Any] | None = None) -> list[Any]:
        """Move the clock on by the call's time, then predict."""
        self.clock.now += self.seconds
        return super().predict(data, params)


def clocked(seconds: float) -> Callable[[FakeClock], LoadedModel]:
    """A model whose calls on the loop take `seconds` of the test's clock."""
    return lambda clock: fake_model(ClockedPyfunc(clock=clock, seconds=seconds))


def row_body(name: str) -> bytes:
    """A one-row request whose age is the letter's place in the alphabet (`a` is 1)."""
    return json.dumps(
        {"dataframe_split": {"columns": ["age", "plan"], "data": [[ord(name) - 96, "basic"]]}}
    ).encode()


def large_body(name: str) -> bytes:
    """A request over the inline size cap, whatever the estimate says."""
    rows = [[ord(name[0]) - 96, "basic"]] * (INLINE_MAX_BODY_BYTES // 10)
    return json.dumps({"dataframe_split": {"columns": ["age", "plan"], "data": rows}}).encode()


def pyfunc_calls(harness: Harness) -> int:
    """predict calls the model received, on the loop (threaded batches are the test's)."""
    pyfunc = harness.batcher.model.pyfunc
    assert isinstance(pyfunc, ClockedPyfunc)
    return len(pyfunc.calls)


async def measure_lone(harness: Harness, names: str, seconds: float) -> None:
    """Each request alone, in a worker thread, measured at `seconds`."""
    for name in names:
        submitted = len(harness.executor.submitted)
        await harness.arrive(name)
        assert len(harness.executor.submitted) == submitted + 1, f"{name} went inline"
        await harness.end(seconds=seconds)


async def inline_answer(harness: Harness, name: str) -> bytes:
    """Send a request that must be predicted on the loop; its answer."""
    submitted, calls = len(harness.executor.submitted), pyfunc_calls(harness)
    await harness.arrive(name)
    assert len(harness.executor.submitted) == submitted, f"{name} went to a thread"
    assert pyfunc_calls(harness) == calls + 1
    return (await harness.requests[name]).body


def test_a_lone_request_of_a_version_measured_fast_is_predicted_on_the_loop() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcde"[:INLINE_AFTER_CALLS], FAST)
        assert await inline_answer(harness, "j") == b'{"predictions": [100]}'
        assert await inline_answer(harness, "k") == b'{"predictions": [110]}'
        assert harness.loop_errors == []

    run(INLINE, script, clocked(FAST), row_body)


def test_a_version_is_never_inline_before_enough_threaded_calls_measured_it() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcdefghij"[: INLINE_AFTER_CALLS - 1], FAST)
        await measure_lone(harness, "z", FAST)  # the last call that seeds it still goes out
        assert await inline_answer(harness, "y") == b'{"predictions": [250]}'

    run(INLINE, script, clocked(FAST), row_body)


def test_a_version_measured_slow_stays_in_worker_threads() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcdefghijklmnopqrst", INLINE_BOUND_SECONDS * 2)
        assert pyfunc_calls(harness) == 0

    run(INLINE, script, clocked(FAST), row_body)


def test_a_request_arriving_while_its_version_predicts_in_a_thread_waits_its_turn() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcde"[:INLINE_AFTER_CALLS], FAST)
        harness.body = large_body  # over the size cap: a worker thread, however fast
        await harness.arrive("x")
        assert harness.batches().endswith("e x")
        harness.body = row_body
        await harness.arrive("w")  # its version is busy: it queues, not on the loop
        assert pyfunc_calls(harness) == 0
        assert harness.answered() == set("abcde"[:INLINE_AFTER_CALLS])
        await harness.end(seconds=FAST)
        # x is answered; w is the next batch, alone: predicted on the loop.
        assert harness.batches().endswith("e x")
        assert pyfunc_calls(harness) == 1
        assert (await harness.requests["w"]).body == b'{"predictions": [230]}'

    run(INLINE, script, clocked(FAST), row_body)


def test_requests_read_in_one_turn_share_a_batch_rather_than_the_loop() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcde"[:INLINE_AFTER_CALLS], FAST)
        await harness.arrive("xy")
        assert harness.batches().endswith(" xy")
        assert pyfunc_calls(harness) == 0
        await harness.end(seconds=FAST)

    run(INLINE, script, clocked(FAST), row_body)


def test_an_inline_call_slower_than_the_bound_demotes_its_version_at_once() -> None:
    async def script(harness: Harness) -> None:
        pyfunc = harness.batcher.model.pyfunc
        assert isinstance(pyfunc, ClockedPyfunc)
        await measure_lone(harness, "abcde"[:INLINE_AFTER_CALLS], FAST)
        pyfunc.seconds = INLINE_BOUND_SECONDS * 5  # the model turns slow
        assert await inline_answer(harness, "f") == b'{"predictions": [60]}'
        # Demoted: threaded until its threaded calls bring the estimate back under the bound.
        pyfunc.seconds = FAST
        await measure_lone(harness, "ghijk"[:INLINE_AFTER_CALLS], FAST)
        for name in "lmnopqrstuvwxyz":
            submitted = len(harness.executor.submitted)
            await harness.arrive(name)
            if len(harness.executor.submitted) == submitted:
                break  # measured fast again: back on the loop
            await harness.end(seconds=FAST)
        else:
            raise AssertionError("never promoted again")
        assert harness.loop_errors == []

    run(INLINE, script, clocked(FAST), row_body)


def test_under_load_a_request_is_batched_not_predicted_on_the_loop() -> None:
    async def script(harness: Harness) -> None:
        await measure_lone(harness, "abcde"[:INLINE_AFTER_CALLS], FAST)
        harness.body = large_body  # hold the version in a thread while two more queue
        await harness.arrive("x")
        harness.body = row_body
        await harness.arrive("fg")
        await harness.end(seconds=FAST)
        await harness.end(seconds=FAST)  # f and g answered together just now: under load
        await harness.arrive("h")  # held for company, as under load without the loop
        assert pyfunc_calls(harness) == 0
        await harness.tick(10)
        assert harness.batches().endswith("x fg h")
        await harness.end(seconds=FAST)
        await harness.tick(10.5)  # idle for longer than max_wait_ms: alone again
        assert await inline_answer(harness, "i") == b'{"predictions": [90]}'

    run(Batching(max_batch_size=64, max_wait_ms=10), script, clocked(FAST), row_body)
