"""The rule for predicting a lone request on the event loop, and the loop's budget per turn."""

import asyncio

import pytest

from gateway.core.inline_policy import (
    INLINE_AFTER_CALLS,
    INLINE_BOUND_SECONDS,
    INLINE_MAX_BODY_BYTES,
    TURN_BUDGET_SECONDS,
    PredictEstimate,
    may_inline,
)
from gateway.serving.inline import TurnBudget, timed

BOUND = INLINE_BOUND_SECONDS
FAST = BOUND / 4


def measured(*seconds: float, bound: float = BOUND) -> PredictEstimate:
    """An estimate after these threaded calls."""
    estimate = PredictEstimate(bound=bound)
    for value in seconds:
        estimate.observe(value, inline=False)
    return estimate


SEEDED = (FAST,) * INLINE_AFTER_CALLS

# (threaded calls measured, body bytes, turn spent, whether inline)
CASES = {
    "fast, small, first of its turn": (SEEDED, 100, 0.0, True),
    "one threaded call short of the seed": (SEEDED[1:], 100, 0.0, False),
    "measured slow": ((BOUND * 2,) * 10, 100, 0.0, False),
    "fast on average of a slow start, not yet under the bound": (
        (BOUND * 8, *SEEDED),
        100,
        0.0,
        False,
    ),
    "a body over the cap": (SEEDED, INLINE_MAX_BODY_BYTES + 1, 0.0, False),
    "a body at the cap": (SEEDED, INLINE_MAX_BODY_BYTES, 0.0, True),
    "room left in the turn": (SEEDED, 100, TURN_BUDGET_SECONDS - FAST, True),
    "the turn's budget spent": (SEEDED, 100, TURN_BUDGET_SECONDS - FAST / 2, False),
}


@pytest.mark.parametrize(
    ("calls", "body", "spent", "inline"), list(CASES.values()), ids=list(CASES)
)
def test_a_lone_request_is_predicted_on_the_loop_only_by_this_rule(
    calls: tuple[float, ...], body: int, spent: float, inline: bool
) -> None:
    assert may_inline(measured(*calls), body, spent) is inline


def test_a_bound_of_zero_never_predicts_on_the_loop() -> None:
    assert not measured(*(0.0,) * 20, bound=0.0).fast


def test_an_inline_call_over_the_bound_demotes_at_once_and_is_remembered() -> None:
    estimate = measured(*SEEDED)
    assert estimate.fast
    estimate.observe(FAST, inline=True)
    assert estimate.fast
    estimate.observe(BOUND * 10, inline=True)
    assert not estimate.fast
    assert estimate.seconds == BOUND * 10
    for _ in range(INLINE_AFTER_CALLS):
        estimate.observe(FAST, inline=False)
    assert not estimate.fast  # the slow call still weighs on the moving estimate
    for _ in range(20):
        estimate.observe(FAST, inline=False)
    assert estimate.fast


def test_the_turn_budget_starts_again_in_the_loop_s_next_turn() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        budget = TurnBudget()
        budget.spend(loop, 0.001)
        budget.spend(loop, 0.0005)
        assert budget.spent == 0.0015
        await asyncio.sleep(0)
        assert budget.spent == 0.0

    asyncio.run(main())


def test_timed_returns_the_result_and_the_clock_s_difference() -> None:
    ticks = iter([1.0, 1.25])
    assert timed(lambda: next(ticks), divmod, 7, 2) == ((3, 1), 0.25)
