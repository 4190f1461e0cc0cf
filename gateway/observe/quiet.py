"""Log lines that cannot flood the server log: one line a kind per interval, and warnings once.

A client's bad request is not an event that deserves a traceback: the caller got its 400, the
inference log has the record, and a flood of identical lines under load only buries what
matters. `QuietLog` writes at most one line per kind (e.g. model version and exception type) per
interval and says how many it held back; `OncePerKind` lets each distinct warning a model
library raises through once (scikit-learn's `catch_warnings` blocks reset Python's own
once-per-location registry, so without it one warning can repeat on every call).
"""

import logging
import threading
import time
from collections.abc import Callable, Hashable

_MAX_KINDS = 1024


class QuietLog:
    """At most one line per kind per `interval` seconds; the next line counts those held back."""

    def __init__(
        self,
        logger: logging.Logger,
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[Hashable, float] = {}
        self._held: dict[Hashable, int] = {}

    def clear(self) -> None:
        """Forget every kind logged: the next line of each is written at once."""
        with self._lock:
            self._last.clear()
            self._held.clear()

    def warning(self, kind: Hashable, message: str, *args: object) -> bool:
        """Log `message % args` unless this kind was logged within the interval; True if logged."""
        now = self._clock()
        with self._lock:
            last = self._last.get(kind)
            if last is not None and now - last < self._interval:
                self._held[kind] = self._held.get(kind, 0) + 1
                return False
            if len(self._last) >= _MAX_KINDS and kind not in self._last:
                self._last.clear()
                self._held.clear()
            self._last[kind] = now
            held = self._held.pop(kind, 0)
        if held:
            self._logger.warning("%s (%d more like it held back)", message % args, held)
        else:
            self._logger.warning(message, *args)
        return True


class OncePerKind(logging.Filter):
    """Lets a record through once per (logger, message): for `py.warnings`, once per warning."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        """True the first time this logger logs this message."""
        key = (record.name, record.getMessage())
        with self._lock:
            if key in self._seen:
                return False
            if len(self._seen) < _MAX_KINDS:
                self._seen.add(key)
        return True
