"""Whether a lone request of a batched model version may be predicted on the event loop (pure).

A hand-off to a worker thread and back costs more than a fast model's whole `predict` call. The
loop may run a request itself when all of these hold:

- the version's measured predict time is at most the bound (`batching.inline_max_ms`, 1 ms by
  default, `INLINE_BOUND_SECONDS`; 0 turns inline predictions off): a moving estimate
  (EWMA) of the wall time of one request's parse, predict and encode, seeded by
  `INLINE_AFTER_CALLS` calls measured in a worker thread; never inline before those;
- the request's body is at most `INLINE_MAX_BODY_BYTES`, a hard cap on its rows (read before it
  is parsed, so a large request never reaches the loop whatever the estimate says);
- it is the loop's first inline prediction in this turn, or those of this turn, this one's
  estimate included, stay within `TURN_BUDGET_SECONDS` (the scheduler counts them per turn,
  `gateway.serving.inline.TurnBudget`);
- its batch is that request alone: nothing else of its version read in the same turn, waiting
  or being predicted, and not held for company under load (the scheduler's own check).

An inline call that took longer than the bound demotes the version at once: it is predicted in
worker threads until `INLINE_AFTER_CALLS` more of its threaded calls have been measured and the
estimate, which still remembers the slow call, is back under the bound. So a model that becomes
slow holds the loop for one call, the call that shows it; one that is slow never does.
"""

from dataclasses import dataclass
from typing import Final

INLINE_BOUND_SECONDS: Final = 0.001
INLINE_AFTER_CALLS: Final = 5
INLINE_MAX_BODY_BYTES: Final = 4096
TURN_BUDGET_SECONDS: Final = 0.002
# Weight of the newest measurement in the moving estimate.
SMOOTHING: Final = 0.25


@dataclass
class PredictEstimate:
    """A model version's moving estimate of one lone request's predict time, and its verdict."""

    bound: float = INLINE_BOUND_SECONDS
    after_calls: int = INLINE_AFTER_CALLS
    seconds: float = 0.0
    seeded: bool = False
    # Calls measured in a thread since the estimate began or the version was last demoted.
    measured: int = 0

    @property
    def fast(self) -> bool:
        """Whether a lone request of this version may be predicted on the loop."""
        return self.bound > 0 and self.measured >= self.after_calls and self.seconds <= self.bound

    def observe(self, seconds: float, *, inline: bool) -> None:
        """Fold in one lone request's measured time; a slow inline call demotes the version."""
        if not self.seeded:
            self.seconds, self.seeded = seconds, True
        else:
            self.seconds += SMOOTHING * (seconds - self.seconds)
        if inline and seconds > self.bound:
            self.seconds = max(self.seconds, seconds)
            self.measured = 0
        elif not inline:
            self.measured += 1


def may_inline(estimate: PredictEstimate, body_bytes: int, turn_spent: float) -> bool:
    """The rule for one lone request: fast version, small body, and room left in this turn.

    `turn_spent` is what this turn of the loop has already spent on inline predictions: the
    first of a turn always has room, the next ones while the turn stays within its budget.
    """
    return (
        estimate.fast
        and body_bytes <= INLINE_MAX_BODY_BYTES
        and (turn_spent == 0 or turn_spent + estimate.seconds <= TURN_BUDGET_SECONDS)
    )
