"""Batch messages: durable jobs on JetStream `LLORCH_BATCH`, results on `LLORCH_RESULTS`."""

from typing import Literal

from schemas.api import Error, FinishReason, GenerateRequest
from schemas.base import Message

BatchOutcome = Literal["ok", "failed"]
NoticeOutcome = Literal["ok", "failed", "retry", "duplicate"]  # a BatchEvent's


class BatchJob(GenerateRequest, tag="batch_job", kw_only=True):
    """One job of a batch: a GenerateRequest plus the producer's id for it.

    Published on `<prefix>.batch.submit.<producer>.<batch>.<custom_id>` (its `custom_id` must
    be the subject's); `priority` and `job_id` are ignored (batch jobs always run at batch
    priority). The `type` tag may be omitted by producers.
    """

    custom_id: str  # unique within its batch, [A-Za-z0-9_-]{1,64} (it is a subject token)


class BatchResult(Message, tag="batch_result", omit_defaults=False):
    """The one stored result of a job, on `<prefix>.batch.result.<producer>.<batch>.<custom_id>`.

    Every field is written, defaults and nulls included: a result line always shows its
    `text`, `finish_reason` and `tokens_out`, so an empty text is never mistaken for a
    missing one (and JSONL consumers see one shape for every line).
    """

    batch_id: str
    custom_id: str
    outcome: BatchOutcome
    text: str = ""  # the whole generated text
    finish_reason: FinishReason | None = None  # set when outcome is "ok"
    tokens_in: int = 0
    tokens_out: int = 0  # tokens generated (the end-of-generation token not counted)
    note: str | None = None  # set when an ok result's text is empty: why
    ttft_ms: float | None = None  # job start on the worker to first token
    total_ms: float | None = None  # job start on the worker to end
    queue_ms: float | None = None  # admission in the orchestrator to start on a worker
    worker_id: str | None = None
    model: str | None = None
    seed: int | None = None  # the seed used: replaying with it reproduces the text
    attempts: int = 1  # deliveries of the job message (retries and redeliveries included)
    error: Error | None = None  # set when outcome is "failed"
    completed_at: float = 0.0  # unix seconds when the result was stored


class BatchStatusRequest(Message, tag="batch_status_request"):
    """Answered with BatchStatus, or Error NOT_FOUND for a batch the streams hold nothing of."""

    batch_id: str


class BatchStatus(Message, tag="batch_status"):
    """Progress of a batch. total = done + failed + messages still in `LLORCH_BATCH`."""

    batch_id: str
    total: int
    done: int  # results with outcome ok
    failed: int  # results with outcome failed (cancelled jobs included)
    in_flight: int  # pulled by the orchestrator, not yet stored
    queued: int  # still waiting in the work-queue stream
    cancelled: bool = False
    empty: int = 0  # of `done`: ok results whose text is empty (each result's `note` says why)


class BatchCancelRequest(Message, tag="batch_cancel"):
    """Answered with BatchCancelReply, or Error NOT_FOUND (as a status request)."""

    batch_id: str


class BatchCancelReply(Message, tag="batch_cancel_reply"):
    batch_id: str
    running_cancelled: int  # running jobs told to stop; queued ones get CANCELLED results


class BatchEvent(Message, tag="batch_event"):
    """Plain NATS notice on `<prefix>.batch.event.<producer>.<batch>` each time a job settles:
    not stored; lets `status --watch` and tests wake on progress instead of polling."""

    batch_id: str
    custom_id: str
    outcome: NoticeOutcome
