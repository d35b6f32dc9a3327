"""How long a refused client should wait: the queue's length over its recent drain rate."""

from collections import deque

RATE_WINDOW_S = 60.0  # completions counted for the drain rate
MIN_SPAN_S = 1.0  # a burst of completions is not read as an unbounded rate
NO_RATE_MS = 5_000  # nothing completed lately: no rate to go by
MIN_RETRY_MS, MAX_RETRY_MS = 100, 60_000


class DrainRate:
    def __init__(self) -> None:
        self._done: deque[float] = deque()  # completion times, oldest first

    def completed(self, now: float) -> None:
        self._done.append(now)

    def retry_after_ms(self, now: float, waiting: int) -> int:
        """Time for `waiting` jobs plus the refused one to drain at the recent rate.

        The rate is completions over the time they span (oldest kept completion to now), not
        over the whole window: 500 jobs done in the 5 s since a burst began is 100/s, not the
        8/s that dividing by 60 s would claim (which capped the hint at 60 s while the queue
        drained in half that)."""
        while self._done and self._done[0] < now - RATE_WINDOW_S:
            self._done.popleft()
        if not self._done:
            return NO_RATE_MS
        rate = len(self._done) / max(now - self._done[0], MIN_SPAN_S)
        return int(min(MAX_RETRY_MS, max(MIN_RETRY_MS, 1000 * (waiting + 1) / rate)))
