"""Per-job bookkeeping of the stream: event numbering, resume suppression, probe and progress
timing. Pure: time is passed in, nothing is published here."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import Execute

PROBE_INTERVAL_S = 1.0  # how often an event doubles as a "client still there?" probe


@dataclass(slots=True)
class JobState:
    execute: Execute
    progress_interval: float  # seconds between `progress` statuses
    started_at: float  # monotonic seconds when the worker accepted the job
    next_seq: int = field(init=False)
    last_published: int | None = None  # seq of the last event actually sent to the client
    tokens_out: int = 0  # tokens generated (published or not)
    first_token_at: float | None = None
    _last_probe: float | None = None
    _last_progress: float = field(init=False)
    _last_progress_seq: int | None = None

    def __post_init__(self) -> None:
        self.next_seq = self.execute.seq
        self._last_progress = self.started_at

    def take_seq(self) -> tuple[int, bool]:
        """The next event's seq and whether to publish it (the client lacks it)."""
        seq = self.next_seq
        self.next_seq += 1
        visible = seq > self.execute.resume_after
        if visible:
            self.last_published = seq
        return seq, visible

    def probe_due(self, now: float) -> bool:
        """Whether the event being published now should go out as a probe request.

        The first published event always probes, then one per PROBE_INTERVAL_S.
        """
        if self._last_probe is not None and now - self._last_probe < PROBE_INTERVAL_S:
            return False
        self._last_probe = now
        return True

    def progress_due(self, now: float) -> int | None:
        """The seq to report in a `progress` status, or None when none is due or nothing changed."""
        if now - self._last_progress < self.progress_interval:
            return None
        if self.last_published is None or self.last_published == self._last_progress_seq:
            return None
        self._last_progress = now
        self._last_progress_seq = self.last_published
        return self.last_published

    def token_generated(self, now: float) -> None:
        self.tokens_out += 1
        if self.first_token_at is None:
            self.first_token_at = now

    def ttft_ms(self, now: float) -> float:
        return ((self.first_token_at or now) - self.started_at) * 1000.0

    def elapsed_ms(self, now: float) -> float:
        return (now - self.started_at) * 1000.0
