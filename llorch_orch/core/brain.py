"""The brain: events in, commands out. No NATS, no asyncio, no clock (time arrives in events)."""

import heapq
import zlib
from collections import OrderedDict, deque
from itertools import islice
from typing import assert_never

from schemas import (
    CancelReply,
    Error,
    Execute,
    Heartbeat,
    JobInfo,
    JobStatus,
    Queued,
    SpawnRequest,
    StopRequest,
    WorkerInfo,
    WorkerReady,
)
from schemas.codes import ErrorCode
from schemas.ids import new_id

from . import events as ev
from .admission import check_limits, check_model
from .commands import CancelOnWorker, Command, Emit, SendExecute, Spawn, Stop
from .config import OrchConfig
from .drain import DrainRate
from .jobs import FinishedJobs, Job
from .placement import best_slot, plan_eviction, slots
from .queue import AdmissionQueue
from .recovery import STOPPING, RecoveryMixin
from .tenancy import ANYONE, Caller
from .view import ClusterView, PoolRec, WorkerPhase, WorkerRec, pick_idle

RETRIABLE = frozenset(
    {
        ErrorCode.QUEUE_FULL,
        ErrorCode.WORKER_START_FAILED,
        ErrorCode.WORKER_LOST,
        ErrorCode.POOL_LOST,
        ErrorCode.UNAVAILABLE,
    }
)
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


class Core(RecoveryMixin):
    def __init__(self, cfg: OrchConfig | None = None) -> None:
        self.cfg = cfg or OrchConfig()
        self.view = ClusterView(self.cfg)
        self.queue = AdmissionQueue(self.cfg.queue_capacity)
        self.jobs: dict[str, Job] = {}  # queued and running
        self._active: dict[str, Job] = {}  # dispatched or running: all the timers need to scan
        self.finished = FinishedJobs(self.cfg.finished_memory)
        self._deadlines: list[tuple[float, str]] = []  # heap of queued jobs' deadlines
        self._keepalive: deque[tuple[float, str]] = deque()  # (queued sent at, job), oldest first
        self._completions = DrainRate()
        self._out: list[Command] = []
        self._given_up: OrderedDict[str, None] = OrderedDict()  # lost workers: never re-adopt
        self._stopping = False  # after Shutdown: nothing may wait in the queue

    # ---- entry point -------------------------------------------------------------------
    def handle(self, event: ev.Event) -> list[Command]:
        self._out = []
        match event:
            case ev.Submit():
                self._submit(event)
            case ev.HeartbeatSeen():
                self._heartbeat(event.now, event.heartbeat)
            case ev.ReadySeen():
                self._ready(event.now, event.ready)
            case ev.FailedSeen():
                self._spawn_failed(event.now, event.failed.worker_id, event.failed.message)
            case ev.SpawnRefused():
                self._spawn_refused(event)
            case ev.StatusSeen():
                self._status(event.now, event.status)
            case ev.ExecuteAccepted() | ev.ExecuteRefused() | ev.AbandonAnswered():
                self._answered(event)
            case ev.Tick():
                self._tick(event.now)
            case ev.Shutdown():
                self._shutdown()
            case _:
                assert_never(event)
        self._schedule(event.now)
        return self._out

    # ---- client requests ---------------------------------------------------------------
    def _submit(self, event: ev.Submit) -> None:
        now, req, reply_to = event.now, event.request, event.reply_to
        job_id = req.job_id or new_id("job")
        error = check_limits(req, self.cfg) or check_model(req, self.view)
        if self._stopping:
            error = Error(code=ErrorCode.UNAVAILABLE, message=STOPPING, retriable=True)
        if error is None and job_id in self.jobs:
            error = Error(code=ErrorCode.INVALID_PARAMS, message=f"job {job_id} already exists")
        if error is not None:
            error.job_id, error.seq = job_id, 0
            self._out.append(Emit(reply_to, error, job_id))
            return
        seed = req.seed if req.seed is not None else zlib.crc32(job_id.encode())
        deadline = now + req.deadline_ms / 1000 if req.deadline_ms else None
        job = Job(job_id, req, reply_to, now, seed, deadline, last_activity=now)
        job.trace, job.owner = event.trace, event.owner
        worker = None
        if not self.queue.waiting(req.model):
            worker = self.view.idle_worker(req.model, req.pool, req.device)
        if worker is not None:
            self.jobs[job_id] = job
            self._dispatch(now, job, worker)
            return
        if not self._make_room(now, job):
            return
        self.jobs[job_id] = job
        position = self.queue.push(job_id, req.model, req.priority)
        if deadline is not None:
            heapq.heappush(self._deadlines, (deadline, job_id))
        self._emit_queued(job, position, now)

    def _room_for_one(self) -> bool:
        """Whether one more job may enter the queue (dropping the oldest batch job if allowed)."""
        if not self.queue.full:
            return True
        victim = self.queue.oldest_batch() if self.cfg.queue_policy == "drop-oldest-batch" else None
        if victim is None:
            return False
        self._fail(self.jobs[victim], ErrorCode.QUEUE_FULL, "dropped for newer work")
        return True

    def _make_room(self, now: float, job: Job) -> bool:
        if self._room_for_one():
            return True
        error = Error(
            code=ErrorCode.QUEUE_FULL,
            message=f"queue holds {len(self.queue)} jobs (capacity {self.queue.capacity})",
            retriable=True,
            retry_after_ms=self._completions.retry_after_ms(now, len(self.queue)),
            seq=job.take_seq(),
            job_id=job.job_id,
        )
        self._out.append(Emit(job.reply_to, error, job.job_id))
        return False

    def cancel(
        self, now: float, job_id: str, caller: Caller = ANYONE
    ) -> tuple[CancelReply | Error, list[Command]]:
        """Cancel a queued or running job of `caller`'s; idempotent. Returns the reply and the
        commands."""
        self._out = []
        reply = self._cancel(job_id, caller)
        self._schedule(now)
        return reply, self._out

    def _cancel(self, job_id: str, caller: Caller) -> CancelReply | Error:
        job = self._visible(job_id, caller)
        if job is None:
            if self.finished.get(job_id, caller) is not None:
                return CancelReply(job_id=job_id, outcome="already_finished")
            return Error(code=ErrorCode.NOT_FOUND, message=f"no job {job_id}")
        if job.phase == "queued":
            self._fail(job, ErrorCode.CANCELLED, "cancelled by client")
        elif not job.cancel_requested:
            job.cancel_requested = True
            assert job.worker_id is not None
            self._out.append(CancelOnWorker(job.worker_id, job_id))
        return CancelReply(job_id=job_id, outcome="cancelled")

    # ---- queries: a caller sees only its own jobs (another's is as unknown as a bad id) ---
    def _visible(self, job_id: str, caller: Caller) -> Job | None:
        job = self.jobs.get(job_id)
        return job if job is not None and caller.owns(job.owner) else None

    def job_info(self, job_id: str, caller: Caller = ANYONE) -> JobInfo | None:
        job = self._visible(job_id, caller)
        if job is None:
            return self.finished.get(job_id, caller)
        return job.info(job.reported_position if job.phase == "queued" else None)

    def queued_infos(self, limit: int = 1000, caller: Caller = ANYONE) -> list[JobInfo]:
        """The first `limit` waiting jobs of each model that `caller` may see (with their
        positions among all waiting jobs)."""
        out: list[JobInfo] = []
        for model in self.queue.all_models():
            waiting = self.queue.head(model, len(self.queue))
            own = ((pos, self.jobs[j]) for pos, j in waiting if caller.owns(self.jobs[j].owner))
            out += [job.info(pos) for pos, job in islice(own, limit)]
        return out

    def running_infos(self, caller: Caller = ANYONE) -> list[JobInfo]:
        return [j.info() for j in self._active.values() if caller.owns(j.owner)]

    # ---- scheduling ----------------------------------------------------------------------
    def _schedule(self, now: float) -> None:
        for model in self.queue.waiting_models():
            self._dispatch_waiting(now, model)
            if self.queue.waiting(model):
                self._ensure_capacity(now, model)
            self._update_positions(model, now)

    def _dispatch_waiting(self, now: float, model: str) -> None:
        while self.queue.waiting(model):
            pairs = self._match(model)
            if pairs is None:
                return
            job, worker = pairs
            self.queue.remove(job.job_id)
            self._dispatch(now, job, worker)

    def _match(self, model: str) -> tuple[Job, WorkerRec] | None:
        """First waiting job (within the head) that an idle worker of its model can take."""
        idle = self.view.in_phase(model, "idle")
        if not idle:
            return None
        for _, job_id in self.queue.head(model, self.cfg.queued_update_top):
            job = self.jobs[job_id]
            worker = pick_idle(idle, job.request.pool, job.request.device)
            if worker is not None:
                return job, worker
        return None

    def _dispatch(self, now: float, job: Job, worker: WorkerRec) -> None:
        req = job.request
        if job.exec_seq is None:
            job.exec_seq = job.take_seq()
        job.phase, job.worker_id, job.reasons = "dispatched", worker.worker_id, []
        self._active[job.job_id] = job
        job.attempts += 1
        job.ack_deadline = now + self.cfg.execute_ack_timeout_s
        job.last_activity = now
        self.view.set_phase(worker, "busy")
        worker.job_id = job.job_id
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
        )
        self._out.append(SendExecute(worker.worker_id, execute, job.attempts, job.trace))

    def _unserved(self, model: str) -> Job | None:
        """First waiting job (within the head) that no starting worker is on its way to serve.

        Pins matter: a worker starting on device 0 does not serve a job pinned to device 1.
        """
        starting = self.view.in_phase(model, "starting")
        for _, job_id in self.queue.head(model, self.cfg.queued_update_top):
            job = self.jobs[job_id]
            pool, device = job.request.pool, job.request.device
            claim = next((w for w in starting if w.matches(pool, device)), None)
            if claim is None:
                return job
            starting.remove(claim)
        return None

    def _ensure_capacity(self, now: float, model: str) -> None:
        job = self._unserved(model)
        if job is None:
            return
        live = self.view.live_count(model)
        if live >= self.cfg.model(model).max_workers:
            job.reasons = [f"{model} has {live} of max_workers workers, all busy"]
            return
        candidates, reasons = slots(self.view, model, job.request.pool, job.request.device)
        slot, unfit = best_slot(candidates, self.cfg.placement)
        if slot is not None:
            pin = (job.request.pool, job.request.device)
            self._spawn(
                now, model, slot.pool_id, slot.device, slot.need, pin=pin, job_id=job.job_id
            )
            return
        eviction = plan_eviction(self.view, candidates)
        if eviction is not None:
            for victim in eviction.victims:
                self._stop(victim, drain=True, reason="evict")
        job.reasons = reasons + unfit

    def _spawn(
        self,
        now: float,
        model: str,
        pool_id: str,
        device: int,
        need: int,
        attempt: int = 1,
        pin: tuple[str | None, int | None] = (None, None),
        job_id: str | None = None,
    ) -> None:
        worker_id = new_id("w")
        self.view.add(WorkerRec(
            worker_id, pool_id, model, device, "starting", need,
            spawn_deadline=now + self.cfg.spawn_timeout_s, spawn_attempt=attempt,
            pin_pool=pin[0], pin_device=pin[1],
        ))  # fmt: skip
        request = SpawnRequest(
            worker_id=worker_id, model=model, device=device, n_ctx=self.view.n_ctx(model)
        )
        self._out.append(Spawn(pool_id, request, job_id))

    def _stop(self, worker_id: str, drain: bool, reason: str) -> None:
        worker = self.view.workers[worker_id]
        self.view.set_phase(worker, "draining")
        request = StopRequest(worker_id=worker_id, drain=drain)
        self._out.append(Stop(worker.pool_id, request, reason))

    def _emit_queued(self, job: Job, position: int, now: float) -> None:
        job.reported_position, job.queued_at = position, now
        if self.cfg.queued_keepalive_s > 0:
            self._keepalive.append((now, job.job_id))
        event = Queued(seq=job.take_seq(), job_id=job.job_id, position=position)
        self._out.append(Emit(job.reply_to, event, job.job_id))

    def _update_positions(self, model: str, now: float) -> None:
        for position, job_id in self.queue.head(model, self.cfg.queued_update_top):
            job = self.jobs[job_id]
            if position == job.reported_position:
                continue
            if job.exec_seq is None:
                self._emit_queued(job, position, now)
            else:  # a retry: the stream's seqs belong to the worker now, so no new event
                job.reported_position = position

    # ---- worker and pool facts ---------------------------------------------------------
    def _heartbeat(self, now: float, hb: Heartbeat) -> None:
        if abs(hb.ts - now) > self.cfg.max_heartbeat_skew_s:
            return
        pool = self.view.pools.get(hb.pool_id)
        if pool is None:
            pool = self.view.pools[hb.pool_id] = PoolRec(hb.pool_id, now, hb.interval_s)
        pool.last_seen, pool.interval_s, pool.alive = now, hb.interval_s, True
        pool.devices = {d.index: d for d in hb.devices}
        pool.models = {m.name: m for m in hb.models}
        reported = {w.worker_id: w for w in hb.workers}
        for worker in [w for w in self.view.workers.values() if w.pool_id == hb.pool_id]:
            self._reconcile(now, worker, reported.pop(worker.worker_id, None))
        for info in reported.values():  # workers we never spawned: adopt (orchestrator restart)
            if info.worker_id in self._given_up:
                continue  # a worker we gave up on (and asked to stop): not ours any more
            if self._fenced_on(info.worker_id):
                continue  # it may still run that job: adopted once the abandon is answered
            if info.state in ("ready", "busy", "draining"):
                phase: WorkerPhase = "draining" if info.state == "draining" else "idle"
                adopted = self.view.add(WorkerRec(
                    info.worker_id, hb.pool_id, info.model, info.device, phase, 0,
                    last_used=now, seen=True,
                ))  # fmt: skip
                if info.memory_bytes:
                    self._learn(adopted, info.memory_bytes)

    def _fenced_on(self, worker_id: str) -> bool:
        return any(j.phase == "fenced" and j.worker_id == worker_id for j in self._active.values())

    def _reconcile(self, now: float, worker: WorkerRec, info: WorkerInfo | None) -> None:
        """One worker we track against what its pool's heartbeat says about it."""
        if info is None and worker.phase == "starting" and not worker.seen:
            return  # the heartbeat may predate our spawn request: not a disappearance
        if info is None or info.state in ("exited", "failed"):
            reason = info.message if info is not None and info.message else "worker exited"
            self._worker_gone(now, worker.worker_id, reason)
            return
        worker.seen = True
        if info.state == "ready" and worker.phase == "starting":
            self._became_ready(now, worker, info.memory_bytes)
        elif info.memory_bytes and info.memory_bytes > (worker.memory_bytes or 0):
            self._learn(worker, info.memory_bytes)  # the pool re-measures loaded workers
        elif info.state == "ready" and worker.phase == "busy" and worker.job_id is None:
            self.view.set_phase(worker, "idle")  # the unknown job it refused for ended
            worker.last_used = now

    def _ready(self, now: float, ready: WorkerReady) -> None:
        worker = self.view.workers.get(ready.worker_id)
        if worker is None or worker.phase != "starting":
            return
        self._became_ready(now, worker, ready.memory_bytes)

    def _became_ready(self, now: float, worker: WorkerRec, memory: int | None) -> None:
        self.view.set_phase(worker, "idle")
        worker.spawn_deadline, worker.last_used = None, now
        worker.seen = True
        if memory:
            self._learn(worker, memory)

    def _learn(self, worker: WorkerRec, memory: int) -> None:
        """A worker's measured footprint: its own reservation, and the budget of the next worker
        of its model on that kind of device (the largest seen: workers grow after loading)."""
        worker.memory_bytes = memory
        pool = self.view.pools.get(worker.pool_id)
        device = pool.devices.get(worker.device) if pool else None
        if device is not None:
            key = (worker.model, device.kind)
            self.view.measured[key] = max(memory, self.view.measured.get(key, 0))

    def _status(self, now: float, status: JobStatus) -> None:
        job = self.jobs.get(status.job_id)
        worker = self.view.workers.get(status.worker_id)
        ended = status.state in ("finished", "failed")
        if job is not None and job.phase == "queued" and ended and job.exec_seq is not None:
            # a worker we gave up on finished the job after all and sent its terminal event:
            # the job is over; a retry would publish after that event
            self.queue.remove(job.job_id)
            self._finish(now, job, "finished" if status.state == "finished" else "failed", None)
            job = None
        if job is None or job.worker_id != status.worker_id:
            # a job we do not track (adopted worker after a restart): its end frees the worker
            frees = worker is not None and job is None and ended and worker.phase == "busy"
            if frees and worker is not None and worker.job_id in (None, status.job_id):
                self._free(now, worker)
            return
        job.last_activity = now
        job.last_seq = max(job.last_seq, status.seq)  # abandoned: exactly where it stopped
        if status.state in ("started", "progress"):
            if job.phase != "fenced":  # a fenced job stays so until its worker has stopped
                job.phase, job.ack_deadline = "running", None
            return
        if status.state == "abandoned":
            self._abandoned(now, job, status)
            return
        outcome = "finished" if status.state == "finished" else "failed"
        if status.code == ErrorCode.CANCELLED:
            outcome = "cancelled"
        self._finish(now, job, outcome, status.code)
        if worker is not None and worker.phase == "busy":
            self._free(now, worker)

    def _free(self, now: float, worker: WorkerRec) -> None:
        """Its job ended: the worker is idle again (and the most recently used)."""
        self.view.set_phase(worker, "idle")
        worker.job_id, worker.last_used = None, now

    def _answered(self, event: ev.ExecuteAccepted | ev.ExecuteRefused | ev.AbandonAnswered) -> None:
        """A worker's answer to what we sent it (execute, abandon)."""
        match event:
            case ev.ExecuteAccepted():
                self._accepted(event.job_id, event.worker_id)
            case ev.ExecuteRefused():
                self._refused(event)
            case ev.AbandonAnswered():
                self._fence_lifted(event.now, event.job_id, event.worker_id)
            case _:
                assert_never(event)

    def _accepted(self, job_id: str, worker_id: str) -> None:
        job = self.jobs.get(job_id)
        if job is not None and job.worker_id == worker_id:
            job.ack_deadline = None

    def _refused(self, event: ev.ExecuteRefused) -> None:
        now, job_id, worker_id, code = event.now, event.job_id, event.worker_id, event.code
        job = self.jobs.get(job_id)
        worker = self.view.workers.get(worker_id)
        if job is None or job.worker_id != worker_id or job.phase == "fenced":
            return  # a fenced job is settled by its abandon's answer
        if code in JOB_FAULTS:  # the job is bad, not the worker: one terminal, worker kept
            self._fail(job, code, event.message or f"the worker refused the job: {code}")
            if worker is not None and worker.phase == "busy" and worker.job_id == job_id:
                self._free(now, worker)
            return
        if code == ErrorCode.WORKER_BUSY and worker is not None:
            worker.job_id = None  # busy with a job we do not track; its end frees it
            job.attempts -= 1
            self._requeue(now, job)
            return
        if worker is None:  # its worker already left the view
            self._retry_or_fail(now, job, f"execute refused: {code}")
            return
        self._worker_gone(now, worker_id, f"execute refused: {code}", kill=True)

    def _shutdown(self) -> None:
        """Every waiting job ends with a retriable UNAVAILABLE (its client sends it again, to the
        next orchestrator); from now on nothing is queued. Running jobs stream on."""
        self._stopping = True
        for model in self.queue.all_models():
            for _, job_id in list(self.queue.head(model, len(self.queue))):
                self._fail(self.jobs[job_id], ErrorCode.UNAVAILABLE, STOPPING)

    def _finish(self, now: float, job: Job, outcome: str, code: ErrorCode | None) -> None:
        del self.jobs[job.job_id]
        self._active.pop(job.job_id, None)
        self.finished.add(job, outcome, code)
        self._completions.completed(now)

    def _fail(
        self, job: Job, code: ErrorCode, message: str, retry_after_ms: int | None = None
    ) -> None:
        """End a job from the orchestrator's side: the client gets the one terminal event."""
        self.queue.remove(job.job_id)
        retriable = code in RETRIABLE
        error = Error(
            code=code,
            message=message,
            retriable=retriable,
            retry_after_ms=retry_after_ms,
            seq=job.terminal_seq,
            job_id=job.job_id,
        )
        self._out.append(Emit(job.reply_to, error, job.job_id))
        del self.jobs[job.job_id]
        self._active.pop(job.job_id, None)
        outcome = "cancelled" if code == ErrorCode.CANCELLED else "failed"
        self.finished.add(job, outcome, code)
