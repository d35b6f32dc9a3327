"""Pure batch logic: fold a job's events into its result, decide store-or-retry, gate pulls."""

from __future__ import annotations

from dataclasses import dataclass, field

from schemas import (
    BatchJob,
    BatchResult,
    End,
    Error,
    ErrorCode,
    Event,
    GenerateRequest,
    Started,
    Token,
)

from .config import BatchConfig

# MODEL_NOT_FOUND is retried too: after an orchestrator restart, or while the one pool that
# holds the model is away, the catalog is briefly incomplete; a real typo fails after retries.
BATCH_RETRIABLE = frozenset({ErrorCode.MODEL_NOT_FOUND})


def to_request(job: BatchJob, job_id: str) -> GenerateRequest:
    """The job as the core sees it: every request field of the job (so a field added to
    GenerateRequest is never dropped here), always batch priority, the runner's job id."""
    fields = {name: getattr(job, name) for name in GenerateRequest.__struct_fields__}
    return GenerateRequest(**(fields | {"priority": "batch", "job_id": job_id}))


@dataclass(slots=True)
class Collector:
    """One attempt's events, in seq order; tokens replayed after a core retry are skipped."""

    submitted_at: float  # unix s when handed to the core
    has_stop: bool = False  # the job has stop sequences (one may match before any text)
    chat: bool = False  # the job sent chat `messages` (else a raw `prompt`)
    text: list[str] = field(default_factory=list)
    started: Started | None = None
    started_at: float | None = None
    terminal: End | Error | None = None
    last_seq: int = -1

    def add(self, event: Event, now: float) -> bool:
        """Feed one event; True once the terminal event arrived (later ones are ignored)."""
        if self.terminal is not None:
            return True
        if isinstance(event, End | Error):
            self.terminal = event
            return True
        if event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        if isinstance(event, Started):
            self.started, self.started_at = event, self.started_at or now
        elif isinstance(event, Token):
            self.text.append(event.text)
        return False

    def result(self, batch_id: str, custom_id: str, attempts: int, now: float) -> BatchResult:
        result = BatchResult(
            batch_id=batch_id,
            custom_id=custom_id,
            outcome="failed",
            text="".join(self.text),
            attempts=attempts,
            completed_at=now,
        )
        if self.started is not None:
            result.worker_id, result.model = self.started.worker_id, self.started.model
            result.seed = self.started.seed
        if self.started_at is not None:
            result.queue_ms = round((self.started_at - self.submitted_at) * 1000, 3)
        match self.terminal:
            case End() as end:
                result.outcome, result.finish_reason = "ok", end.finish_reason
                result.tokens_in, result.tokens_out = end.tokens_in, end.tokens_out
                result.ttft_ms, result.total_ms = end.ttft_ms, end.total_ms
                result.note = None if result.text else why_empty(end, self.has_stop, self.chat)
            case Error() as error:
                result.error = Error(code=error.code, message=error.message)
            case None:
                result.error = Error(code=ErrorCode.INTERNAL, message="no terminal event")
        return result


def why_empty(end: End, has_stop: bool, chat: bool) -> str:
    """Why a job that ended well has no text: the result says so rather than look broken."""
    if end.tokens_out == 0:
        why = "the model ended its turn at once (end-of-generation token first, 0 tokens)"
        if chat:
            return why
        # typical of an instruct model given a raw prompt: its chat template was not applied
        return f"{why}; chat models often do on a raw `prompt`: send `messages` instead"
    causes = ["they are special tokens, which have no text"]
    if has_stop and end.finish_reason == "stop":
        causes.insert(0, "a stop sequence matched first (the match is cut from the text)")
    return f"the {end.tokens_out} generated tokens left no text: {', or '.join(causes)}"


def failed(batch_id: str, custom_id: str, attempts: int, now: float, error: Error) -> BatchResult:
    """A result for a job that never ran (malformed, cancelled, poison)."""
    return BatchResult(
        batch_id=batch_id,
        custom_id=custom_id,
        outcome="failed",
        attempts=attempts,
        error=Error(code=error.code, message=error.message),
        completed_at=now,
    )


def retry_delay(terminal: End | Error | None, delivered: int, cfg: BatchConfig) -> float | None:
    """Seconds to wait before the job's redelivery, or None to store its outcome now."""
    if isinstance(terminal, End) or delivered >= cfg.max_attempts:
        return None
    if terminal is None or terminal.retriable or terminal.code in BATCH_RETRIABLE:
        if terminal is not None and terminal.retry_after_ms:
            return max(terminal.retry_after_ms / 1000, cfg.backoff(delivered))
        return cfg.backoff(delivered)
    return None


def has_room(core_batch_queued: int, in_flight: int, pools_alive: int, cfg: BatchConfig) -> bool:
    """Pull one more job only when the core would start it soon and knows some pool.

    The core's queue serves interactive jobs first, so a short batch lane there never delays
    them; the rest of the batch waits in JetStream, where it survives any crash.
    """
    return (
        pools_alive > 0
        and core_batch_queued < cfg.core_batch_queue
        and in_flight < cfg.max_in_flight
    )
