"""What the core asks the shell to do: plain data carrying ids, never live objects."""

from dataclasses import dataclass

from schemas import Event as StreamEvent
from schemas import Execute, SpawnRequest, StopRequest


@dataclass(frozen=True, slots=True)
class Emit:
    """Publish an event on a job's stream (the client's inbox)."""

    subject: str
    event: StreamEvent
    job_id: str


@dataclass(frozen=True, slots=True)
class Spawn:
    pool_id: str
    request: SpawnRequest
    job_id: str | None = None  # the waiting job it is for: its trace covers the spawn


@dataclass(frozen=True, slots=True)
class Stop:
    pool_id: str
    request: StopRequest
    reason: str  # "keep-alive", "evict", "spawn-timeout"


@dataclass(frozen=True, slots=True)
class SendExecute:
    worker_id: str
    execute: Execute
    attempt: int


@dataclass(frozen=True, slots=True)
class CancelOnWorker:
    worker_id: str
    job_id: str


@dataclass(frozen=True, slots=True)
class AbandonOnWorker:
    """Tell a worker whose pool was lost to stop streaming a job silently (its retry follows)."""

    worker_id: str
    job_id: str


Command = Emit | Spawn | Stop | SendExecute | CancelOnWorker | AbandonOnWorker
