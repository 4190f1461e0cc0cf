"""The loop's side of inline predictions: their time per turn of the loop, and timing a call.

`gateway.core.inline_policy` decides whether a lone request may be predicted on the loop;
`gateway.serving.batching` asks it, and measures with `timed` what the decision learns from.
"""

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

_P = ParamSpec("_P")
_T = TypeVar("_T")


class TurnBudget:
    """The seconds one turn of the loop has spent on inline predictions; shared by its batchers."""

    def __init__(self) -> None:
        self._spent = 0.0
        self._renewing = False

    @property
    def spent(self) -> float:
        """What this turn of the loop has spent on inline predictions so far."""
        return self._spent

    def spend(self, loop: asyncio.AbstractEventLoop, seconds: float) -> None:
        """Count an inline prediction; the count starts again in the loop's next turn."""
        self._spent += seconds
        if not self._renewing:
            # A callback scheduled now runs in the next turn, after everything ready in this one.
            self._renewing = True
            loop.call_soon(self._renew)

    def _renew(self) -> None:
        self._spent, self._renewing = 0.0, False


def timed(
    clock: Callable[[], float], function: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs
) -> tuple[_T, float]:
    """`function`'s result and the seconds it took by `clock`; run in a worker thread."""
    started = clock()
    result = function(*args, **kwargs)
    return result, clock() - started
