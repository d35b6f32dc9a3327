"""Token bytes -> publishable text: whole UTF-8 characters only, stop strings never emitted.

Pure: no engine, no I/O. One `TextStream` per job.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Step:
    text: str  # safe to publish now ("" when everything is held back)
    stopped: bool  # a stop string was reached: generation must end, nothing more to emit


class StopFilter:
    """Holds back any tail that may begin a stop string until it is resolved."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]  # an empty stop string can never be meaningful
        self._held = ""

    def feed(self, text: str) -> Step:
        buf = self._held + text
        cut = self._first_stop(buf)
        if cut is not None:
            self._held = ""
            return Step(buf[:cut], stopped=True)
        keep = self._partial_tail(buf)
        self._held = buf[len(buf) - keep :]
        return Step(buf[: len(buf) - keep], stopped=False)

    def flush(self) -> str:
        """Generation ended without a stop: the held tail was only a partial match."""
        held, self._held = self._held, ""
        return held

    def _first_stop(self, buf: str) -> int | None:
        """Start of the stop string that completes first (the longest on a tie).

        Ordering by end position, not start, makes the result independent of how the text
        was chunked into tokens: it is where a character-by-character scan would stop.
        """
        hits = [(i + len(s), -len(s)) for s in self._stops if (i := buf.find(s)) >= 0]
        if not hits:
            return None
        end, neg_len = min(hits)
        return end + neg_len

    def _partial_tail(self, buf: str) -> int:
        """Length of the longest suffix of `buf` that is a proper prefix of some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buf)), best, -1):
                if buf.endswith(stop[:n]):
                    best = n
                    break
        return best


class TextStream:
    """Incremental UTF-8 decoding followed by stop-string hold-back."""

    def __init__(self, stops: list[str]) -> None:
        # "replace": a model may emit an invalid byte sequence; that must not kill the job.
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = StopFilter(stops)

    def feed(self, data: bytes) -> Step:
        return self._stops.feed(self._utf8.decode(data))

    def finish(self) -> Step:
        """What is still owed to the client when generation ends by length or end-of-sequence."""
        step = self._stops.feed(self._utf8.decode(b"", final=True))
        return step if step.stopped else Step(step.text + self._stops.flush(), stopped=False)
