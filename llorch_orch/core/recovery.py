"""Time-driven and failure paths of the brain: timeouts, lost workers and pools, retries."""

import heapq
from collections import OrderedDict, deque

from schemas import JobStatus, StopRequest
from schemas.codes import ErrorCode

from . import events as ev
from .commands import AbandonOnWorker, Command, Stop
from .config import OrchConfig
from .drain import DrainRate
from .jobs import Job
from .placement import best_slot, slots
from .queue import AdmissionQueue
from .view import ClusterView, WorkerRec

STOPPING = "orchestrator stopping: send the request again"  # the message of its UNAVAILABLE

KEEPALIVES_PER_TICK = 1024  # a huge queue's keep-alives go out in slices, other events between
FORGET_LOST = 4096  # ids of workers given up on, remembered so heartbeats do not re-adopt them


class RecoveryMixin:
    # state and helpers the brain provides (declared here so the mixin type-checks on its own)
    cfg: OrchConfig
    view: ClusterView
    queue: AdmissionQueue
    jobs: dict[str, Job]
    _active: dict[str, Job]
    _deadlines: list[tuple[float, str]]
    _keepalive: "deque[tuple[float, str]]"
    _out: list[Command]
    _given_up: "OrderedDict[str, None]"
    _stopping: bool
    _completions: DrainRate

    def _stop(self, worker_id: str, drain: bool, reason: str) -> None:
        raise NotImplementedError

    def _emit_queued(self, job: Job, position: int, now: float) -> None:
        raise NotImplementedError

    def _fail(
        self, job: Job, code: ErrorCode, message: str, retry_after_ms: int | None = None
    ) -> None:
        raise NotImplementedError

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
        raise NotImplementedError

    def _room_for_one(self) -> bool:
        raise NotImplementedError

    # ---- timers --------------------------------------------------------------------------
    def _tick(self, now: float) -> None:
        self._expire_deadlines(now)
        self._keep_waiting_clients(now)
        for worker in list(self.view.workers.values()):
            if worker.spawn_deadline is not None and now >= worker.spawn_deadline:
                self._spawn_failed(now, worker.worker_id, "did not become ready in time", kill=True)
            elif worker.phase == "idle":
                keep = self.cfg.model(worker.model).keep_alive_s
                if keep > 0 and now - worker.last_used >= keep:
                    self._stop(worker.worker_id, drain=True, reason="keep-alive")
        self._check_running(now)
        for pool in self.view.pools.values():
            if pool.alive and now - pool.last_seen >= self.cfg.pool_lost_after * pool.interval_s:
                self._pool_lost(now, pool.pool_id, f"pool {pool.pool_id} lost")

    def _pool_lost(self, now: float, pool_id: str, reason: str) -> None:
        """Out of placement until it heartbeats again; its jobs are fenced and retried."""
        self.view.pools[pool_id].alive = False
        for worker in [w for w in self.view.workers.values() if w.pool_id == pool_id]:
            # its workers may live on (only the pool died) and stream: fence their jobs
            self._worker_gone(now, worker.worker_id, reason, fence=True)

    def _spawn_refused(self, event: ev.SpawnRefused) -> None:
        if event.code == ErrorCode.UNAVAILABLE:
            self._pool_unreachable(event.now, event.worker_id)
        else:
            self._spawn_failed(event.now, event.worker_id, f"{event.code}: {event.message}")

    def _pool_unreachable(self, now: float, worker_id: str) -> None:
        """Nobody answered a spawn: the pool is gone or restarting, which says nothing about the
        model. The pool counts as lost at once (no further spawns go to it) and the waiting
        jobs keep waiting for it, or another pool, to heartbeat (their deadlines still hold)."""
        worker = self.view.remove(worker_id)
        if worker is not None and worker.pool_id in self.view.pools:
            self._pool_lost(now, worker.pool_id, f"pool {worker.pool_id} does not answer")

    def _check_running(self, now: float) -> None:
        """Jobs whose worker did not ack execute in time or went silent: the worker is lost."""
        for job in list(self._active.values()):
            if job.phase == "fenced":  # the abandon's answer settles it (the shell's timeout)
                continue
            late_ack = job.ack_deadline is not None and now >= job.ack_deadline
            stalled = now - job.last_activity >= self.cfg.stall_timeout_s
            if not (late_ack or stalled) or job.worker_id is None:
                continue
            if job.worker_id in self.view.workers:
                self._worker_gone(now, job.worker_id, "worker went silent", kill=True)
            else:  # its worker already left the view: the job must not wait forever
                self._retry_or_fail(now, job, "worker went silent")

    def _expire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._deadlines)
            job = self.jobs.get(job_id)
            # a retry waiting again has started once: its deadline no longer applies
            if job is not None and job.phase == "queued" and job.exec_seq is None:
                self._fail(job, ErrorCode.DEADLINE_EXCEEDED, "still queued at its deadline")

    def _keep_waiting_clients(self, now: float) -> None:
        """Re-send `queued` to jobs that heard nothing for the keep-alive: a waiting job is
        never mistaken for a lost one by a client's stall rule."""
        keep, budget = self.cfg.queued_keepalive_s, KEEPALIVES_PER_TICK
        while self._keepalive and self._keepalive[0][0] + keep <= now and budget > 0:
            budget -= 1  # the rest are still due: next_wake asks for another tick at once
            sent_at, job_id = self._keepalive.popleft()
            if self._awaits_keepalive(sent_at, job_id):
                job = self.jobs[job_id]
                self._emit_queued(job, job.reported_position, now)

    def _awaits_keepalive(self, sent_at: float, job_id: str) -> bool:
        """Still waiting, never started, and no newer `queued` went out since `sent_at`."""
        job = self.jobs.get(job_id)
        return (
            job is not None
            and job.phase == "queued"
            and job.exec_seq is None
            and job.queued_at == sent_at
        )

    def next_wake(self) -> float | None:
        """Earliest time at which a Tick may change something."""
        times: list[float] = []
        if self._deadlines:
            times.append(self._deadlines[0][0])
        while self._keepalive and not self._awaits_keepalive(*self._keepalive[0]):
            self._keepalive.popleft()  # stale: the job started or got a newer `queued`
        if self._keepalive:
            times.append(self._keepalive[0][0] + self.cfg.queued_keepalive_s)
        for w in self.view.workers.values():
            if w.spawn_deadline is not None:
                times.append(w.spawn_deadline)
            elif w.phase == "idle" and self.cfg.model(w.model).keep_alive_s > 0:
                times.append(w.last_used + self.cfg.model(w.model).keep_alive_s)
        for job in self._active.values():
            if job.phase == "fenced":
                continue
            times.append(job.last_activity + self.cfg.stall_timeout_s)
            if job.ack_deadline is not None:
                times.append(job.ack_deadline)
        times += [
            p.last_seen + self.cfg.pool_lost_after * p.interval_s
            for p in self.view.pools.values()
            if p.alive
        ]
        return min(times) if times else None

    # ---- losses and retries --------------------------------------------------------------
    def _send_stop(self, worker: WorkerRec, drain: bool, reason: str) -> None:
        """Stop a worker that already left the view (no-op when its pool is lost)."""
        pool = self.view.pools.get(worker.pool_id)
        if pool is None or not pool.alive:
            return
        self._give_up(worker.worker_id)
        request = StopRequest(worker_id=worker.worker_id, drain=drain)
        self._out.append(Stop(worker.pool_id, request, reason))

    def _give_up(self, worker_id: str) -> None:
        """A worker we no longer count on: a heartbeat that still lists it does not adopt it."""
        self._given_up[worker_id] = None
        while len(self._given_up) > FORGET_LOST:
            self._given_up.popitem(last=False)

    def _worker_gone(
        self, now: float, worker_id: str, reason: str, kill: bool = False, fence: bool = False
    ) -> None:
        """A worker is lost; `kill` when it may still be alive (silent, refused execute) and its
        pool can kill it; `fence` when it may be alive and nobody can kill it (its pool is lost):
        its job is retried only once it has stopped streaming."""
        worker = self.view.workers.get(worker_id)
        if worker is None:
            return
        if worker.phase == "starting":
            self._spawn_failed(now, worker_id, reason, kill=kill)
            return
        self.view.remove(worker_id)
        if kill:
            self._send_stop(worker, drain=False, reason="lost")
        job = self.jobs.get(worker.job_id) if worker.job_id else None
        if job is None or job.worker_id != worker_id:
            return
        if fence:
            job.phase, job.ack_deadline = "fenced", None
            self._out.append(AbandonOnWorker(worker_id, job.job_id))
        else:
            self._retry_or_fail(now, job, reason)

    def _fence_lifted(self, now: float, job_id: str, worker_id: str) -> None:
        """The worker of a fenced job no longer streams it: retry it (or fail it) now."""
        job = self.jobs.get(job_id)
        if job is not None and job.phase == "fenced" and job.worker_id == worker_id:
            reason = f"the pool of worker {worker_id} was lost"
            self._retry_or_fail(now, job, reason, ErrorCode.POOL_LOST)

    def _abandoned(self, now: float, job: Job, status: JobStatus) -> None:
        """The job's worker stopped it without a terminal event (its pool died, or we asked):
        the stream is the orchestrator's to finish, after `status.seq`."""
        if job.phase == "fenced":
            self._fence_lifted(now, job.job_id, status.worker_id)
            return
        if self.view.remove(status.worker_id) is not None:
            self._give_up(status.worker_id)  # it exits (its pool died): never adopt it again
        code = status.code or ErrorCode.WORKER_LOST
        self._retry_or_fail(now, job, f"its worker abandoned it ({code})", code)

    def _retry_or_fail(
        self, now: float, job: Job, reason: str, code: ErrorCode = ErrorCode.WORKER_LOST
    ) -> None:
        if job.cancel_requested:
            self._fail(job, ErrorCode.CANCELLED, "cancelled by client")
        elif job.attempts < self.cfg.max_job_attempts:
            self._requeue(now, job)
        else:
            self._fail(job, code, f"worker lost mid-job: {reason}")

    def _requeue(self, now: float, job: Job) -> None:
        """Back to the head of its lane; the retry resumes the stream after `last_seq`."""
        if job.cancel_requested:
            self._fail(job, ErrorCode.CANCELLED, "cancelled by client")
            return
        if self._stopping:
            self._fail(job, ErrorCode.UNAVAILABLE, STOPPING)
            return
        if not self._room_for_one():
            self._fail(
                job,
                ErrorCode.QUEUE_FULL,
                "worker lost and the queue is full: cannot retry",
                retry_after_ms=self._completions.retry_after_ms(now, len(self.queue)),
            )
            return
        job.phase, job.worker_id, job.ack_deadline = "queued", None, None
        self._active.pop(job.job_id, None)
        self.queue.push(job.job_id, job.request.model, job.request.priority, front=True)

    def _spawn_failed(self, now: float, worker_id: str, message: str, kill: bool = False) -> None:
        worker = self.view.workers.get(worker_id)
        if worker is None:
            return
        if worker.phase != "starting":  # a loaded worker failed: that is a loss, not a spawn
            self._worker_gone(now, worker_id, message)
            return
        self.view.remove(worker_id)
        if kill:
            self._send_stop(worker, drain=False, reason="spawn-timeout")
        if worker.spawn_attempt < 2:
            candidates, _ = slots(self.view, worker.model, worker.pin_pool, worker.pin_device)
            others = [
                s for s in candidates if (s.pool_id, s.device) != (worker.pool_id, worker.device)
            ]
            slot, _ = best_slot(others or candidates, self.cfg.placement)
            if slot is not None:
                pin = (worker.pin_pool, worker.pin_device)
                self._spawn(now, worker.model, slot.pool_id, slot.device, slot.need, 2, pin)
                return
        if self.view.workers_of(worker.model):
            return  # other workers of the model will serve the waiting jobs
        for _, job_id in list(self.queue.head(worker.model, len(self.queue))):
            self._fail(self.jobs[job_id], ErrorCode.WORKER_START_FAILED, message)
