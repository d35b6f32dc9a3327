"""The core's state and the few moves that change it consistently.

Every part of the core (the brain's event handlers, placement, recovery) works on one
`CoreState` it is handed, and changes jobs and workers only through these moves, so a job's
end always frees its record, reaches its client once and is noticed by observers once.
"""

import heapq
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from schemas import Error, Execute, Queued, SpawnRequest, StopRequest
from schemas.codes import ErrorCode

from .commands import Emit, SendExecute, Spawn, Stop
from .config import OrchConfig
from .drain import DrainRate
from .jobs import FinishedJobs, Job, Outcome
from .outputs import JobEnded, Output
from .placement import Slot
from .queue import AdmissionQueue
from .view import ClusterView, WorkerRec

RETRIABLE = frozenset(
    {
        ErrorCode.QUEUE_FULL,
        ErrorCode.WORKER_START_FAILED,
        ErrorCode.WORKER_LOST,
        ErrorCode.POOL_LOST,
        ErrorCode.UNAVAILABLE,
    }
)
STOPPING = "orchestrator stopping: send the request again"  # the message of its UNAVAILABLE
FORGET_LOST = 4096  # ids of workers given up on, remembered so heartbeats do not re-adopt them


@dataclass(slots=True)
class CoreState:
    cfg: OrchConfig
    # Ids the core makes up (workers, and jobs a request did not name) are this string plus a
    # counter: unique across orchestrator restarts when the shell passes a random one, and the
    # same again when a recording is replayed with it.
    incarnation: str
    view: ClusterView
    queue: AdmissionQueue
    finished: FinishedJobs
    jobs: dict[str, Job] = field(default_factory=dict)  # queued and running
    active: dict[str, Job] = field(default_factory=dict)  # dispatched, running or fenced
    deadlines: list[tuple[float, str]] = field(default_factory=list)  # heap: queued deadlines
    keepalive: deque[tuple[float, str]] = field(default_factory=deque)  # (queued sent at, job)
    completions: DrainRate = field(default_factory=DrainRate)
    given_up: OrderedDict[str, None] = field(default_factory=OrderedDict)  # never re-adopt
    # model -> (pool, device) of its spawns that failed since it last had a worker ready
    spawn_failures: dict[str, list[tuple[str, int]]] = field(default_factory=dict)
    stopping: bool = False  # after Shutdown: nothing may wait in the queue
    out: list[Output] = field(default_factory=list)  # what the event being handled produced
    _minted: int = 0

    @classmethod
    def new(cls, cfg: OrchConfig, incarnation: str) -> "CoreState":
        return cls(
            cfg,
            incarnation,
            ClusterView(cfg),
            AdmissionQueue(cfg.queue_capacity),
            FinishedJobs(cfg.finished_memory),
        )

    def mint(self, prefix: str) -> str:
        self._minted += 1
        return f"{prefix}-{self.incarnation}-{self._minted}"

    # ---- jobs ----------------------------------------------------------------------------
    def emit_queued(self, job: Job, position: int, now: float) -> None:
        job.reported_position, job.queued_at = position, now
        if self.cfg.queued_keepalive_s > 0:
            self.keepalive.append((now, job.job_id))
        event = Queued(seq=job.take_seq(), job_id=job.job_id, position=position)
        self.out.append(Emit(job.reply_to, event, job.job_id))

    def enqueue(self, now: float, job: Job) -> None:
        self.jobs[job.job_id] = job
        position = self.queue.push(job.job_id, job.request.model, job.request.priority)
        if job.deadline_at is not None:
            heapq.heappush(self.deadlines, (job.deadline_at, job.job_id))
        self.emit_queued(job, position, now)

    def dispatch(self, now: float, job: Job, worker: WorkerRec) -> None:
        req = job.request
        self.queue.remove(job.job_id)
        if job.exec_seq is None:
            job.exec_seq = job.take_seq()
            job.started_at = now
        job.phase, job.worker_id, job.reasons = "dispatched", worker.worker_id, ()
        self.jobs[job.job_id] = job
        self.active[job.job_id] = job
        job.attempts += 1
        job.ack_deadline = now + self.cfg.execute_ack_timeout_s
        job.last_activity = now
        self.view.assign(worker, job.job_id)
        execute = Execute(
            job_id=job.job_id,
            model=req.model,
            prompt=req.prompt,
            messages=req.messages,
            max_tokens=req.max_tokens,
            temperature=req.temperature,
            top_p=req.top_p,
            top_k=req.top_k,
            seed=job.seed,
            stream=job.reply_to,
            stop=req.stop,
            seq=job.exec_seq,
            resume_after=job.last_seq,
            resume_hash=job.last_hash,
        )
        self.out.append(SendExecute(worker.worker_id, execute, job.attempts))

    def room_for_one(self, now: float) -> bool:
        """Whether one more job may enter the queue (dropping the oldest batch job if allowed)."""
        if not self.queue.full:
            return True
        victim = self.queue.oldest_batch() if self.cfg.queue_policy == "drop-oldest-batch" else None
        if victim is None:
            return False
        self.fail(now, self.jobs[victim], ErrorCode.QUEUE_FULL, "dropped for newer work")
        return True

    def requeue(self, now: float, job: Job) -> None:
        """Back to the head of its lane; the retry resumes the stream after `last_seq`."""
        if job.cancel_requested:
            self.fail(now, job, ErrorCode.CANCELLED, "cancelled by client")
            return
        if self.stopping:
            self.fail(now, job, ErrorCode.UNAVAILABLE, STOPPING)
            return
        if not self.room_for_one(now):
            self.fail(
                now,
                job,
                ErrorCode.QUEUE_FULL,
                "worker lost and the queue is full: cannot retry",
                retry_after_ms=self.completions.retry_after_ms(now, len(self.queue)),
            )
            return
        self._detach(now, job)
        job.phase, job.worker_id, job.ack_deadline = "queued", None, None
        self.active.pop(job.job_id, None)
        self.queue.push(job.job_id, job.request.model, job.request.priority, front=True)

    def finish(self, now: float, job: Job, outcome: Outcome, code: ErrorCode | None) -> None:
        """The job ended on its worker (whose terminal event the client already has)."""
        self._end(now, job, outcome, code)
        self.completions.completed(now)

    def fail(
        self,
        now: float,
        job: Job,
        code: ErrorCode,
        message: str,
        retry_after_ms: int | None = None,
    ) -> None:
        """End a job from the orchestrator's side: the client gets the one terminal event."""
        error = Error(
            code=code,
            message=message,
            retriable=code in RETRIABLE,
            retry_after_ms=retry_after_ms,
            seq=job.terminal_seq,
            job_id=job.job_id,
        )
        self.out.append(Emit(job.reply_to, error, job.job_id))
        outcome: Outcome = "cancelled" if code == ErrorCode.CANCELLED else "failed"
        self._end(now, job, outcome, code)

    def _detach(self, now: float, job: Job) -> None:
        """Free the slot the job held on its worker, if that worker is still in the view."""
        worker = self.view.workers.get(job.worker_id) if job.worker_id else None
        if worker is not None and job.job_id in worker.jobs:
            self.view.release(worker, job.job_id, now)

    def _end(self, now: float, job: Job, outcome: Outcome, code: ErrorCode | None) -> None:
        self._detach(now, job)
        self.queue.remove(job.job_id)
        del self.jobs[job.job_id]
        self.active.pop(job.job_id, None)
        info = self.finished.add(job, outcome, code, now)
        self.out.append(JobEnded(job.job_id, info))

    # ---- workers -------------------------------------------------------------------------
    def spawn(self, now: float, model: str, place: Slot, job: Job) -> WorkerRec:
        pin = job.request
        pool_id = place.pool_id
        worker = self.view.add(
            WorkerRec(
                self.mint("w"),
                pool_id,
                model,
                place.device,
                "starting",
                place.need,
                spawn_deadline=now + self.cfg.spawn_timeout_s,
                slots=place.slots,
                pin_pool=pin.pool,
                pin_device=pin.device,
            )
        )
        request = SpawnRequest(
            worker_id=worker.worker_id,
            model=model,
            device=place.device,
            n_ctx=self.view.n_ctx(model),
            slots=worker.slots,
        )
        self.out.append(Spawn(pool_id, request, job.job_id))
        return worker

    def stop(self, worker_id: str, drain: bool, reason: str) -> None:
        worker = self.view.workers[worker_id]
        self.view.set_phase(worker, "draining")
        request = StopRequest(worker_id=worker_id, drain=drain)
        self.out.append(Stop(worker.pool_id, request, reason))

    def send_stop(self, worker: WorkerRec, drain: bool, reason: str) -> None:
        """Stop a worker that already left the view (no-op when its pool is lost)."""
        pool = self.view.pools.get(worker.pool_id)
        if pool is None or not pool.alive:
            return
        self.give_up(worker.worker_id)
        request = StopRequest(worker_id=worker.worker_id, drain=drain)
        self.out.append(Stop(worker.pool_id, request, reason))

    def give_up(self, worker_id: str) -> None:
        """A worker we no longer count on: a heartbeat that still lists it does not adopt it."""
        self.given_up[worker_id] = None
        while len(self.given_up) > FORGET_LOST:
            self.given_up.popitem(last=False)

    def became_ready(self, now: float, worker: WorkerRec, memory: int | None, slots: int) -> None:
        worker.slots = slots  # what it runs, whatever was asked
        self.view.set_phase(worker, "idle")
        worker.spawn_deadline, worker.last_used = None, now
        worker.seen = True
        self.spawn_failures.pop(worker.model, None)
        if memory:
            self.learn(worker, memory)

    def learn(self, worker: WorkerRec, memory: int) -> None:
        """A worker's measured footprint: its own reservation, and the budget of the next worker
        of its model on that kind of device (the largest seen: workers grow after loading)."""
        worker.memory_bytes = memory
        pool = self.view.pools.get(worker.pool_id)
        device = pool.devices.get(worker.device) if pool else None
        if device is not None:
            key = (worker.model, device.kind, worker.slots)
            self.view.measured[key] = max(memory, self.view.measured.get(key, 0))
