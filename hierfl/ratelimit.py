"""Rate-limited logging of refusals: at most one line per key per interval, with a count.

A flood of junk must not become a flood of log lines: counters (``ServiceMetrics.reject``)
stay exact, while the log says once per ``interval_s`` per reason what is going on and how
many lines like it were left out.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["REJECT_LOG_INTERVAL_S", "LogThrottle", "suppressed_note"]

#: The services log at most one refusal line per reason per this many seconds.
REJECT_LOG_INTERVAL_S = 10.0


def suppressed_note(suppressed: int, reason: str) -> str:
    """The tail of a throttled line: ``""``, or how many like it were not logged."""
    if not suppressed:
        return ""
    return f" (and {suppressed} more {reason} not logged since the last such line)"


class LogThrottle:
    """Decides which of many similar log lines to write.

    Args:
        interval_s: at most one line per key per this many seconds.
        clock: time source (seconds), injectable for tests.
        max_keys: keys remembered (least recently logged forgotten first), so keys built from
            untrusted input cannot grow memory without bound.

    Usage::

        throttle = LogThrottle(10.0)
        if (suppressed := throttle.admit(exc.reason)) is not None:
            log.info("rejected %s (%d more suppressed)", exc, suppressed)
    """

    def __init__(self, interval_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = 256) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.max_keys = max_keys
        self._lock = threading.Lock()
        # key -> [time of the last line written, lines suppressed since]
        self._state: OrderedDict[str, list[float]] = OrderedDict()

    def admit(self, key: str) -> int | None:
        """Return None to suppress this line, else how many lines of ``key`` were suppressed
        since the last one written (0 for the first)."""
        now = self.clock()
        with self._lock:
            state = self._state.get(key)
            if state is not None and now - state[0] < self.interval_s:
                state[1] += 1
                return None
            suppressed = 0 if state is None else int(state[1])
            self._state[key] = [now, 0]
            self._state.move_to_end(key)
            while len(self._state) > self.max_keys:
                self._state.popitem(last=False)
            return suppressed
