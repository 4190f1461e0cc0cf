"""How many invocations a worker admits at once: `max_in_flight`, lowered while it is overloaded (pure).

By Little's law a worker's requests spend, on average, what it admits divided by what it
answers a second. `max_in_flight` is sized for bursts a worker keeps up with (a few hundred
callers answered in a batch or two), and at that size a flood keeps every admitted request
waiting: 256 admitted at ~4,500 answers a second is ~57 ms each, an order of magnitude above
the unloaded latency, however the queue is ordered. A worker that is refusing requests for
waiting too long is past the knee, where admitting more adds waiting and nothing else.

So the limit has two levels. Normally it is `max_in_flight`. When a batched version's queue
sheds a request for its wait (`max_queue_ms`, or `standing_queue_ms` under a standing queue),
the worker admits at most two full batches of each version that did (`2 x max_batch_size`, one
predicting and the next one forming, never above `max_in_flight`): what keeps those versions
busy, and no more. It stays there while the worker goes on refusing anything, and returns to
`max_in_flight` once it has refused nothing for `HOLD_SECONDS`. A steady flood keeps being
refused, so the lower level holds through it instead of rising and falling with each batch; a
burst that ends is admitted in full again a second later. A worker that keeps up never sheds
for queue time, so it never lowers: bursts and many callers of a fast model are admitted as
before.

`Admission` is driven by its worker's event loop, one call at a time: it holds no lock.
"""

import math
import time
from collections.abc import Callable, Hashable
from typing import Final

# A worker that has refused nothing for this long admits `max_in_flight` again (as long as a
# `Retry-After: 1` asks callers to wait, so callers that honour it keep a flood visible).
HOLD_SECONDS: Final = 1.0
# Full batches a version keeps admitted while its worker is overloaded.
BATCHES_ADMITTED: Final = 2


class Admission:
    """A worker's in-flight limit: `limit` (None: no limit), lowered while it is overloaded."""

    def __init__(
        self,
        limit: int | None,
        *,
        on_change: Callable[[int | None], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.configured = limit
        self.limit = limit
        # Told the new limit whenever it is lowered or restored.
        self._on_change = on_change
        # The versions whose queue shed for waiting in this overload, with their batch size.
        self._overloaded: dict[Hashable, int] = {}
        self._refused_at = -math.inf
        self._clock = clock

    @property
    def lowered(self) -> bool:
        """Whether the limit is below `max_in_flight` now, for an overload."""
        return self.limit != self.configured

    def admits(self, admitted: int) -> bool:
        """Whether a worker answering `admitted` invocations may take one more; a refusal counts
        as one (it keeps a lowered limit down). While the limit is lowered, the first call after
        `HOLD_SECONDS` without a refusal restores it."""
        if self._overloaded and self._clock() - self._refused_at > HOLD_SECONDS:
            self._overloaded.clear()  # quiet for a while: the overload is over
            self._change(self.configured)
        if self.limit is None or admitted < self.limit:
            return True
        self._refused_at = self._clock()
        return False

    def overloaded(self, version: Hashable, batch_size: int) -> bool:
        """A batched version shed a request for its wait: admit two of its full batches (and
        of each other version that did) until the worker refuses nothing for a while. True when
        the limit changed: the version joined the overload."""
        if self.configured is None:
            return False
        self._refused_at = self._clock()
        if self._overloaded.get(version) == batch_size:
            return False
        self._overloaded[version] = batch_size
        lowered = BATCHES_ADMITTED * sum(self._overloaded.values())
        self._change(min(self.configured, lowered))
        return True

    def _change(self, limit: int | None) -> None:
        self.limit = limit
        if self._on_change is not None:
            self._on_change(limit)
