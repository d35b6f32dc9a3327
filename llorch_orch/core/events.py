"""What the core hears: plain data, each carrying the time it happened (the core has no clock)."""

from dataclasses import dataclass

from schemas import GenerateRequest, Heartbeat, JobStatus, WorkerFailed, WorkerReady
from schemas.codes import ErrorCode

from .tenancy import ANYONE, Caller


@dataclass(frozen=True, slots=True)
class Submit:
    now: float
    request: GenerateRequest
    reply_to: str  # the client's stream subject
    # Of the message that brought it, for the shell's telemetry only (the core ignores them):
    # the sender's W3C trace headers, the subject, and that subject with its ids templated out
    # (`llorch.v1.batch.submit.{producer}.{batch}.{custom_id}`) to name the job's span.
    trace: dict[str, str] | None = None
    subject: str = ""
    subject_name: str = ""
    owner: str | None = None  # the identity that submitted it (tenancy.inbox_identity)


@dataclass(frozen=True, slots=True)
class HeartbeatSeen:
    now: float
    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class ReadySeen:
    now: float
    ready: WorkerReady


@dataclass(frozen=True, slots=True)
class FailedSeen:
    now: float
    failed: WorkerFailed


@dataclass(frozen=True, slots=True)
class StatusSeen:
    now: float
    status: JobStatus


@dataclass(frozen=True, slots=True)
class SpawnRefused:
    """A pool answered a spawn with an error (or did not answer)."""

    now: float
    worker_id: str
    code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class ExecuteRefused:
    """A worker answered execute with an error, or nobody answered."""

    now: float
    job_id: str
    worker_id: str
    code: ErrorCode
    message: str = ""  # the worker's, passed on to the client when the job itself is at fault


@dataclass(frozen=True, slots=True)
class ExecuteAccepted:
    now: float
    job_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class AbandonAnswered:
    """The worker asked to abandon a job can no longer stream it: it answered (after its final
    status, fed first), it has no such job, or it is gone (no responders, no answer)."""

    now: float
    job_id: str
    worker_id: str


@dataclass(frozen=True, slots=True)
class Cancel:
    """A caller asks to cancel a job of its own (the core answers with `Answered`)."""

    now: float
    job_id: str
    caller: Caller = ANYONE


@dataclass(frozen=True, slots=True)
class Reconnected:
    """The orchestrator's own NATS connection was away and is back: what it did not hear
    meanwhile (heartbeats, job statuses) says nothing about pools and workers."""

    now: float


@dataclass(frozen=True, slots=True)
class Tick:
    now: float


@dataclass(frozen=True, slots=True)
class Shutdown:
    """The orchestrator is stopping: nothing may wait in its queue any more."""

    now: float


Event = (
    Submit
    | HeartbeatSeen
    | ReadySeen
    | FailedSeen
    | StatusSeen
    | SpawnRefused
    | ExecuteRefused
    | ExecuteAccepted
    | AbandonAnswered
    | Cancel
    | Reconnected
    | Tick
    | Shutdown
)
