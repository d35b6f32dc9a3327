"""The brain: events in, outputs out. No NATS, no asyncio, no clock, no randomness: time and
everything else arrive in events, so a recording of its events replays to the same outputs
(`llorch_orch.replay`)."""

import zlib
from collections import Counter
from itertools import islice
from typing import assert_never

from schemas import (
    CancelReply,
    Error,
    GenerateRequest,
    Heartbeat,
    JobInfo,
    JobStatus,
    WorkerInfo,
    WorkerReady,
)
from schemas.codes import ErrorCode

from . import events as ev
from .admission import check_limits, check_model
from .commands import CancelOnWorker, Emit
from .config import OrchConfig
from .jobs import FinishedJobs, Job, Outcome
from .outputs import Answered, JobEnded, Output, Pending
from .placement import Dispatch, Evict, StartWorker, Wait, decide
from .queue import AdmissionQueue
from .recovery import Recovery
from .state import STOPPING, CoreState
from .tenancy import ANYONE, Caller
from .view import ClusterView, PoolRec, WorkerPhase, WorkerRec

# Codes of an execute refusal that blame the job, not the worker: the job fails with the
# worker's code and the worker stays (sending it elsewhere would be refused the same way).
JOB_FAULTS = frozenset(
    {
        ErrorCode.INVALID_PARAMS,
        ErrorCode.INVALID_ID,
        ErrorCode.PAYLOAD_TOO_LARGE,
        ErrorCode.CONTEXT_OVERFLOW,
        ErrorCode.NO_CHAT_TEMPLATE,
    }
)


class Core:
    def __init__(self, cfg: OrchConfig | None = None, incarnation: str = "0") -> None:
        """`incarnation`: makes the ids the core mints unique to this run (the shell passes a
        random one; a replay passes the recorded one)."""
        self.cfg = cfg or OrchConfig()
        self.state = CoreState.new(self.cfg, incarnation)
        self.recovery = Recovery(self.state)

    # read-only views of the state, for reports and tests
    @property
    def view(self) -> ClusterView:
        return self.state.view

    @property
    def queue(self) -> AdmissionQueue:
        return self.state.queue

    @property
    def jobs(self) -> dict[str, Job]:
        return self.state.jobs

    @property
    def finished(self) -> FinishedJobs:
        return self.state.finished

    # ---- entry point -------------------------------------------------------------------
    def handle(self, event: ev.Event) -> list[Output]:
        s = self.state
        s.out = []
        match event:
            case ev.Submit():
                self._submit(event)
            case ev.Cancel():
                s.out.append(Answered(self._cancel(event.now, event.job_id, event.caller)))
            case ev.HeartbeatSeen():
                self._heartbeat(event.now, event.heartbeat)
            case ev.ReadySeen():
                self._ready(event.now, event.ready)
            case ev.FailedSeen() | ev.SpawnRefused():
                self._spawn_outcome(event)
            case ev.StatusSeen():
                self._status(event.now, event.status)
            case ev.ExecuteAccepted() | ev.ExecuteRefused() | ev.AbandonAnswered():
                self._answered(event)
            case ev.Tick() | ev.Reconnected():
                self._time(event)
            case ev.Shutdown():
                self._shutdown(event.now)
            case _:
                assert_never(event)
        self._schedule(event.now)
        self.recovery.drop_stale_keepalives()
        return s.out

    def next_wake(self) -> float | None:
        """Earliest time at which a Tick may change something."""
        return self.recovery.next_wake()

    # ---- client requests ---------------------------------------------------------------
    def _submit(self, event: ev.Submit) -> None:
        s, now, req = self.state, event.now, event.request
        job_id = req.job_id or s.mint("job")
        error = check_limits(req, self.cfg) or check_model(req, s.view)
        if s.stopping:
            error = Error(code=ErrorCode.UNAVAILABLE, message=STOPPING, retriable=True)
        if error is None and (known := s.jobs.get(job_id)) is not None:
            if (known.request, known.reply_to, known.owner) == (req, event.reply_to, event.owner):
                self._resubmitted(now, known)
                return
            error = Error(code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} already exists")
        if error is not None:
            self._refuse(now, job_id, req, event.reply_to, error)
            return
        seed = req.seed if req.seed is not None else zlib.crc32(job_id.encode())
        deadline = now + req.deadline_ms / 1000 if req.deadline_ms else None
        job = Job(job_id, req, event.reply_to, now, seed, deadline, last_activity=now)
        job.owner = event.owner
        if not s.queue.waiting(req.model):  # nobody ahead of it: an idle worker takes it now
            worker = s.view.open_worker(req.model, req.pool, req.device)
            if worker is not None:
                s.dispatch(now, job, worker)
                return
        if s.room_for_one(now):
            s.enqueue(now, job)
            return
        error = Error(
            code=ErrorCode.QUEUE_FULL,
            message=f"queue holds {len(s.queue)} jobs (capacity {s.queue.capacity})",
            retriable=True,
            retry_after_ms=s.completions.retry_after_ms(now, len(s.queue)),
        )
        self._refuse(now, job_id, req, event.reply_to, error)

    def _resubmitted(self, now: float, job: Job) -> None:
        """The same job again, from the same client stream: its client did not hear that we
        have it (it resubmits when a new leader announces itself, or when its request got no
        answer: docs/protocol.md). Nothing new is admitted; a waiting job says where it
        waits, a running one streams on."""
        if job.phase == "queued":
            self.state.emit_queued(job, job.reported_position, now)

    def _refuse(
        self, now: float, job_id: str, req: GenerateRequest, reply_to: str, error: Error
    ) -> None:
        """Not admitted: its one terminal event, and the notice of its end."""
        error.job_id, error.seq = job_id, 0
        self.state.out.append(Emit(reply_to, error, job_id))
        info = JobInfo(
            job_id=job_id,
            state="failed",
            model=req.model,
            priority=req.priority,
            code=error.code,
            submitted_at=now,
            ended_at=now,
        )
        self.state.out.append(JobEnded(job_id, info, admitted=False))

    def _cancel(self, now: float, job_id: str, caller: Caller) -> CancelReply | Error:
        """Cancel a queued or running job of `caller`'s; idempotent."""
        s = self.state
        job = self._visible(job_id, caller)
        if job is None:
            if s.finished.get(job_id, caller) is not None:
                return CancelReply(job_id=job_id, outcome="already_finished")
            return Error(code=ErrorCode.NOT_FOUND, message=f"no job {job_id}")
        if job.phase == "queued":
            s.fail(now, job, ErrorCode.CANCELLED, "cancelled by client")
        elif not job.cancel_requested:
            job.cancel_requested = True
            assert job.worker_id is not None
            s.out.append(CancelOnWorker(job.worker_id, job_id))
        return CancelReply(job_id=job_id, outcome="cancelled")

    # ---- queries (pure reads): a caller sees only its own jobs ---------------------------
    def _visible(self, job_id: str, caller: Caller) -> Job | None:
        job = self.state.jobs.get(job_id)
        return job if job is not None and caller.owns(job.owner) else None

    def job_info(self, job_id: str, caller: Caller = ANYONE) -> JobInfo | None:
        """A job as `caller` may see it (another's is as unknown as a bad id)."""
        job = self._visible(job_id, caller)
        if job is None:
            return self.state.finished.get(job_id, caller)
        if job.phase != "queued":
            return job.info()
        position = job.reported_position
        return job.info(position, self._reasons(job, position))

    def queued_infos(self, limit: int = 1000, caller: Caller = ANYONE) -> list[JobInfo]:
        """The first `limit` waiting jobs of each model that `caller` may see (with their
        positions among all waiting jobs)."""
        s = self.state
        out: list[JobInfo] = []
        for model in s.queue.all_models():
            waiting = s.queue.head(model, len(s.queue))
            own = ((pos, s.jobs[j]) for pos, j in waiting if caller.owns(s.jobs[j].owner))
            out += [job.info(pos, self._reasons(job, pos)) for pos, job in islice(own, limit)]
        return out

    def _reasons(self, job: Job, position: int) -> tuple[str, ...]:
        """Placement decides for the jobs near the head of their model's queue; one further
        back waits for those ahead of it."""
        if position <= self.cfg.queued_update_top:
            return job.reasons
        return (f"{position - 1} earlier jobs of {job.request.model} go first",)

    def running_infos(self, caller: Caller = ANYONE) -> list[JobInfo]:
        return [j.info() for j in self.state.active.values() if caller.owns(j.owner)]

    def recent_infos(self, caller: Caller = ANYONE) -> list[JobInfo]:
        return self.state.finished.recent(caller)

    def waiting_count(self, priority: str) -> int:
        return self.state.queue.count("batch" if priority == "batch" else "interactive")

    def live_pools(self) -> int:
        return sum(p.alive for p in self.state.view.pools.values())

    def knows_model(self, model: str) -> bool:
        """In the catalog of a live pool, or configured."""
        return self.state.view.model_info(model) is not None or model in self.cfg.models

    def worker_counts(self) -> dict[tuple[WorkerPhase, str, str], int]:
        """Workers by (phase, model, pool)."""
        counts: dict[tuple[WorkerPhase, str, str], int] = {}
        for w in self.state.view.workers.values():
            key = (w.phase, w.model, w.pool_id)
            counts[key] = counts.get(key, 0) + 1
        return counts

    # ---- scheduling ----------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        for model in self.state.queue.waiting_models():
            self._schedule_model(now, model)

    def _schedule_model(self, now: float, model: str) -> None:
        """One placement decision for each job near the head of the model's queue, carried out
        at once; the positions its clients were told are brought up to date on the way."""
        s, top = self.state, self.cfg.queued_update_top
        claimed: Counter[str] = Counter()  # loading worker -> jobs of this pass waiting for it
        failed = s.spawn_failures.get(model, [])
        # A wait that claims no worker changes nothing, so the next job with the same pins
        # would be told the same: decided once per pass (10,000 queued jobs cost one).
        waits: dict[tuple[str | None, int | None], Wait] = {}
        head = list(s.queue.head(model, top))
        dispatched = 0
        for position, job_id in head:
            job = s.jobs[job_id]
            req = job.request
            known = waits.get((req.pool, req.device))
            if known is not None and known.reasons == job.reasons:  # the common case
                self._tell_position(job, position - dispatched, now)
                continue
            decision = known or decide(s.view, self.cfg, req, claimed, failed)
            if isinstance(decision, Wait) and decision.claim is None:
                waits[req.pool, req.device] = decision
            else:
                waits.clear()  # the view changed: every pin decides afresh
            if isinstance(decision, Dispatch):
                s.dispatch(now, job, decision.worker)
                dispatched += 1
                continue
            self._carry_out(now, job, decision, claimed)
            self._tell_position(job, position - dispatched, now)
        if dispatched:  # the jobs that moved up into the head learn their positions
            for position, job_id in islice(s.queue.head(model, top), len(head) - dispatched, None):
                self._tell_position(s.jobs[job_id], position, now)

    def _carry_out(
        self, now: float, job: Job, decision: StartWorker | Evict | Wait, claimed: Counter[str]
    ) -> None:
        """A decision that leaves the job waiting, and its reasons (told when they change)."""
        s = self.state
        match decision:
            case StartWorker(slot=slot):
                started = s.spawn(now, job.request.model, slot, job)
                claimed[started.worker_id] += 1
            case Evict(victims=victims):
                for victim in victims:
                    s.stop(victim, drain=True, reason="evict")
            case Wait(claim=claim):
                if claim is not None:
                    claimed[claim] += 1
        if decision.reasons != job.reasons:
            job.reasons = decision.reasons
            s.out.append(Pending(job.job_id, decision.reasons))

    def _tell_position(self, job: Job, position: int, now: float) -> None:
        if position == job.reported_position:
            return
        if job.exec_seq is None:
            self.state.emit_queued(job, position, now)
        else:  # a retry: the stream's seqs belong to the worker now, so no new event
            job.reported_position = position

    # ---- worker and pool facts ---------------------------------------------------------
    def _heartbeat(self, now: float, hb: Heartbeat) -> None:
        s = self.state
        if abs(hb.ts - now) > self.cfg.max_heartbeat_skew_s:
            return
        pool = s.view.pools.get(hb.pool_id)
        if pool is None:
            pool = s.view.pools[hb.pool_id] = PoolRec(hb.pool_id, now, hb.interval_s)
        pool.last_seen, pool.interval_s, pool.alive = now, hb.interval_s, True
        pool.devices = {d.index: d for d in hb.devices}
        pool.models = {m.name: m for m in hb.models}
        reported = {w.worker_id: w for w in hb.workers}
        for worker in [w for w in s.view.workers.values() if w.pool_id == hb.pool_id]:
            self._reconcile(now, worker, reported.pop(worker.worker_id, None))
        for info in reported.values():  # workers we never spawned: adopt (orchestrator restart)
            self._adopt(now, hb.pool_id, info)

    def _adopt(self, now: float, pool_id: str, info: WorkerInfo) -> None:
        s = self.state
        if info.worker_id in s.given_up:
            return  # a worker we gave up on (and asked to stop): not ours any more
        if self._fenced_on(info.worker_id):
            return  # it may still run that job: adopted once the abandon is answered
        if info.state not in ("ready", "busy", "draining"):
            return
        phase: WorkerPhase = "draining" if info.state == "draining" else "idle"
        adopted = s.view.add(
            WorkerRec(
                info.worker_id,
                pool_id,
                info.model,
                info.device,
                phase,
                0,
                last_used=now,
                seen=True,
                slots=info.slots,
            )
        )
        s.view.recount(adopted, info.slots_busy, now)  # it brings its busy slots
        if info.memory_bytes:
            s.learn(adopted, info.memory_bytes)

    def _fenced_on(self, worker_id: str) -> bool:
        active = self.state.active.values()
        return any(j.phase == "fenced" and j.worker_id == worker_id for j in active)

    def _reconcile(self, now: float, worker: WorkerRec, info: WorkerInfo | None) -> None:
        """One worker we track against what its pool's heartbeat says about it."""
        s = self.state
        if info is None and worker.phase == "starting" and not worker.seen:
            return  # the heartbeat may predate our spawn request: not a disappearance
        if info is None or info.state in ("exited", "failed"):
            reason = info.message if info is not None and info.message else "worker exited"
            self.recovery.worker_gone(now, worker.worker_id, reason)
            return
        worker.seen = True
        if info.state == "ready" and worker.phase == "starting":
            s.became_ready(now, worker, info.memory_bytes, info.slots)
            return
        if info.memory_bytes and info.memory_bytes > (worker.memory_bytes or 0):
            s.learn(worker, info.memory_bytes)  # the pool re-measures loaded workers
        if info.state == "ready":  # slots busy with jobs we do not track (adopted, refused)
            s.view.recount(worker, info.slots_busy - len(worker.jobs), now)

    def _ready(self, now: float, ready: WorkerReady) -> None:
        worker = self.state.view.workers.get(ready.worker_id)
        if worker is not None and worker.phase == "starting":
            self.state.became_ready(now, worker, ready.memory_bytes, ready.slots)

    def _status(self, now: float, status: JobStatus) -> None:
        s = self.state
        job = s.jobs.get(status.job_id)
        worker = s.view.workers.get(status.worker_id)
        ended = status.state in ("finished", "failed")
        if job is not None and job.phase == "queued" and ended and job.exec_seq is not None:
            # a worker we gave up on finished the job after all and sent its terminal event:
            # the job is over; a retry would publish after that event
            s.finish(now, job, _outcome(status), status.code)
            job = None
        if job is None or job.worker_id != status.worker_id:
            # a job we do not track (adopted worker after a restart): its end frees its slot
            if worker is not None and job is None and ended and worker.foreign > 0:
                s.view.recount(worker, worker.foreign - 1, now)
            return
        job.last_activity = now
        if status.seq >= job.last_seq:  # the text a retry must reproduce, up to last_seq
            job.last_seq, job.last_hash = status.seq, status.hash  # abandoned: where it stopped
        if status.state in ("started", "progress"):
            if job.phase != "fenced":  # a fenced job stays so until its worker has stopped
                job.phase, job.ack_deadline = "running", None
            return
        if status.state == "abandoned":
            self.recovery.abandoned(now, job, status)
            return
        job.ttft_ms, job.tokens_in, job.tokens_out = (
            status.ttft_ms,
            status.tokens_in,
            status.tokens_out,
        )
        s.finish(now, job, _outcome(status), status.code)

    def _time(self, event: ev.Tick | ev.Reconnected) -> None:
        """Timers: due ones fire (Tick), or all restart (our connection was away)."""
        if isinstance(event, ev.Tick):
            self.recovery.tick(event.now)
        else:
            self.recovery.reconnected(event.now)

    def _spawn_outcome(self, event: ev.FailedSeen | ev.SpawnRefused) -> None:
        """A worker failed to start: its pool said so, or refused (or never answered) the spawn."""
        if isinstance(event, ev.FailedSeen):
            failed = event.failed
            self.recovery.spawn_failed(event.now, failed.worker_id, failed.message)
        else:
            self.recovery.spawn_refused(event.now, event.worker_id, event.code, event.message)

    def _answered(self, event: ev.ExecuteAccepted | ev.ExecuteRefused | ev.AbandonAnswered) -> None:
        """A worker's answer to what we sent it (execute, abandon)."""
        match event:
            case ev.ExecuteAccepted():
                self._accepted(event.job_id, event.worker_id)
            case ev.ExecuteRefused():
                self._refused(event)
            case ev.AbandonAnswered():
                self.recovery.fence_lifted(event.now, event.job_id, event.worker_id)
            case _:
                assert_never(event)

    def _accepted(self, job_id: str, worker_id: str) -> None:
        job = self.state.jobs.get(job_id)
        if job is not None and job.worker_id == worker_id:
            job.ack_deadline = None

    def _refused(self, event: ev.ExecuteRefused) -> None:
        s = self.state
        now, job_id, worker_id, code = event.now, event.job_id, event.worker_id, event.code
        job = s.jobs.get(job_id)
        worker = s.view.workers.get(worker_id)
        if job is None or job.worker_id != worker_id or job.phase == "fenced":
            return  # a fenced job is settled by its abandon's answer
        if code in JOB_FAULTS:  # the job is bad, not the worker: one terminal, worker kept
            s.fail(now, job, code, event.message or f"the worker refused the job: {code}")
            return
        if code == ErrorCode.WORKER_BUSY and worker is not None:
            job.attempts -= 1
            s.requeue(now, job)  # frees the slot it was given
            s.view.recount(worker, worker.foreign + 1, now)  # taken by a job we do not track
            return
        if worker is None:  # its worker already left the view
            self.recovery.retry_or_fail(now, job, f"execute refused: {code}")
            return
        self.recovery.worker_gone(now, worker_id, f"execute refused: {code}", kill=True)

    def _shutdown(self, now: float) -> None:
        """Every waiting job ends with a retriable UNAVAILABLE (its client sends it again, to the
        next orchestrator); from now on nothing is queued. Running jobs stream on."""
        s = self.state
        s.stopping = True
        for model in s.queue.all_models():
            for _, job_id in list(s.queue.head(model, len(s.queue))):
                s.fail(now, s.jobs[job_id], ErrorCode.UNAVAILABLE, STOPPING)


def _outcome(status: JobStatus) -> Outcome:
    if status.code == ErrorCode.CANCELLED:
        return "cancelled"
    return "finished" if status.state == "finished" else "failed"
