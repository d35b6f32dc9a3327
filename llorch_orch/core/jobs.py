"""A job's record inside the core, and the bounded memory of finished jobs."""

from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

from schemas import GenerateRequest, JobInfo
from schemas.api import JobState
from schemas.codes import ErrorCode

from .tenancy import ANYONE, Caller

# fenced: its worker's pool was lost, but the worker may still stream; the job waits, neither
# retried nor failed, until that worker is known to have stopped (docs/scheduling.md)
JobPhase = Literal["queued", "dispatched", "running", "fenced"]
Outcome = Literal["finished", "failed", "cancelled"]
RECENT_JOBS = 20  # ended jobs `api.state` lists (newest first)


@dataclass(slots=True)
class Job:
    job_id: str
    request: GenerateRequest
    reply_to: str  # client's stream subject
    submitted_at: float
    seed: int
    deadline_at: float | None
    phase: JobPhase = "queued"
    next_seq: int = 0  # seq of the next event the orchestrator itself emits
    exec_seq: int | None = None  # seq of `started`, fixed at the first dispatch (retries reuse it)
    last_seq: int = -1  # highest seq the worker reported published
    last_hash: str | None = None  # the worker's hash of the text published up to last_seq
    worker_id: str | None = None
    attempts: int = 0
    ack_deadline: float | None = None
    last_activity: float = 0.0
    cancel_requested: bool = False
    reported_position: int = 0
    queued_at: float = 0.0  # when the last `queued` event went out (keep-alive)
    reasons: tuple[str, ...] = ()  # why it waits: the latest placement decision's
    started_at: float | None = None  # first dispatch
    # from the worker's terminal status
    ttft_ms: float | None = None
    tokens_in: int | None = None
    tokens_out: int | None = None
    owner: str | None = None  # the identity that submitted it: who else may see it (tenancy)

    def take_seq(self) -> int:
        seq = self.next_seq
        self.next_seq += 1
        return seq

    @property
    def terminal_seq(self) -> int:
        """Seq for a terminal event the orchestrator sends: after all it knows was sent."""
        return max(self.next_seq, self.last_seq + 1)

    def info(self, position: int | None = None, reasons: tuple[str, ...] | None = None) -> JobInfo:
        state: JobState = "queued" if self.phase == "queued" else "running"
        return JobInfo(
            job_id=self.job_id,
            state=state,
            model=self.request.model,
            priority=self.request.priority,
            position=position,
            worker_id=self.worker_id,
            reasons=list(self.reasons if reasons is None else reasons),
            attempts=self.attempts,
            submitted_at=self.submitted_at,
            started_at=self.started_at,
            ttft_ms=self.ttft_ms,
            tokens_in=self.tokens_in,
            tokens_out=self.tokens_out,
        )


class FinishedJobs:
    """Recently finished jobs, for `jobs.get` and idempotent cancel; oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[str, tuple[str | None, JobInfo]] = OrderedDict()  # owner, info

    def add(self, job: Job, outcome: Outcome, code: ErrorCode | None, now: float) -> JobInfo:
        info = job.info(reasons=())
        info.state, info.code, info.ended_at = outcome, code, now
        self._items[job.job_id] = job.owner, info
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return info

    def recent(self, caller: Caller = ANYONE, limit: int = RECENT_JOBS) -> list[JobInfo]:
        """The last jobs to end that `caller` may see, newest first."""
        out: list[JobInfo] = []
        for owner, info in reversed(self._items.values()):
            if len(out) == limit:
                break
            if caller.owns(owner):
                out.append(info)
        return out

    def get(self, job_id: str, caller: Caller = ANYONE) -> JobInfo | None:
        """The finished job, if `caller` may see it (else None, as for an unknown id)."""
        owner, info = self._items.get(job_id, (None, None))
        return info if info is not None and caller.owns(owner) else None
