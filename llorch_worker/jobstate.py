"""Per-job bookkeeping of the stream: event numbering, resume suppression and its hash check,
probe and progress timing. Pure: time is passed in, nothing is published here."""

from __future__ import annotations

from dataclasses import dataclass, field

from llorch_worker.texthash import RunningHash
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
    # the hash of the text the client holds (docs/worker.md "retry check"): before this run
    # published anything, what the retry said it holds (None when it did not say)
    hash: str | None = field(init=False)
    diverged: bool = False  # regenerated text differs from what the client holds: must end
    _running: RunningHash = field(init=False, default_factory=RunningHash)

    def __post_init__(self) -> None:
        self.next_seq = self.execute.seq
        self._last_progress = self.started_at
        self.hash = self.execute.resume_hash

    def take_seq(self, text: str = "") -> tuple[int, bool]:
        """The next event's seq (carrying `text`, token events only) and whether to publish it
        (the client lacks it). At `resume_after`, the text regenerated so far is checked
        against `resume_hash`: `diverged` once it differs, and nothing after it may be
        published but the terminal event."""
        seq = self.next_seq
        self.next_seq += 1
        self._running.update(text)
        visible = seq > self.execute.resume_after
        if visible:
            self.last_published = seq
            if not self.diverged:
                self.hash = self._running.hexdigest()
        elif seq == self.execute.resume_after:
            regenerated = self._running.hexdigest()
            expected = self.execute.resume_hash
            self.diverged = expected is not None and regenerated != expected
            self.hash = expected if self.diverged else regenerated
        return seq, visible

    def ended_short(self) -> bool:
        """The job ends before it regenerated all the client holds (asked to check it): its
        text differs. The terminal event then takes the seq after the client's last."""
        if self.execute.resume_hash is None or self.next_seq > self.execute.resume_after:
            return False
        self.diverged = True
        self.next_seq = self.execute.resume_after + 1
        return True

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
