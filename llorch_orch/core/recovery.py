"""Time-driven and failure paths of the core: timeouts, lost workers and pools, retries.

A component handed the state it works on (no mixin: it shares nothing with the brain but the
`CoreState` and its moves).
"""

import heapq

from schemas import JobStatus
from schemas.codes import ErrorCode

from .commands import AbandonOnWorker
from .jobs import Job
from .placement import MAX_SPAWN_FAILURES
from .state import CoreState

KEEPALIVES_PER_TICK = 1024  # a huge queue's keep-alives go out in slices, other events between


class Recovery:
    def __init__(self, state: CoreState) -> None:
        self.s = state

    # ---- timers --------------------------------------------------------------------------
    def tick(self, now: float) -> None:
        s = self.s
        self._expire_deadlines(now)
        self._keep_waiting_clients(now)
        for worker in list(s.view.workers.values()):
            if worker.spawn_deadline is not None and now >= worker.spawn_deadline:
                self.spawn_failed(now, worker.worker_id, "did not become ready in time", kill=True)
            elif worker.phase == "idle":
                keep = s.cfg.model(worker.model).keep_alive_s
                if keep > 0 and now - worker.last_used >= keep:
                    s.stop(worker.worker_id, drain=True, reason="keep-alive")
        self._check_running(now)
        for pool in s.view.pools.values():
            if pool.alive and now - pool.last_seen >= s.cfg.pool_lost_after * pool.interval_s:
                self.pool_lost(now, pool.pool_id, f"pool {pool.pool_id} lost")

    def reconnected(self, now: float) -> None:
        """Silence while we were away proves nothing: every loss timer starts again now."""
        s = self.s
        for pool in s.view.pools.values():
            if pool.alive:
                pool.last_seen = now
        for job in s.active.values():
            job.last_activity = now
            if job.ack_deadline is not None:
                job.ack_deadline = now + s.cfg.execute_ack_timeout_s

    def next_wake(self) -> float | None:
        """Earliest time at which a Tick may change something (a pure read)."""
        s = self.s
        times: list[float] = []
        if s.deadlines:
            times.append(s.deadlines[0][0])
        if s.keepalive:  # a stale head only wakes the timer early; the tick drops it
            times.append(s.keepalive[0][0] + s.cfg.queued_keepalive_s)
        for w in s.view.workers.values():
            if w.spawn_deadline is not None:
                times.append(w.spawn_deadline)
            elif w.phase == "idle" and s.cfg.model(w.model).keep_alive_s > 0:
                times.append(w.last_used + s.cfg.model(w.model).keep_alive_s)
        for job in s.active.values():
            if job.phase == "fenced":
                continue
            times.append(job.last_activity + s.cfg.stall_timeout_s)
            if job.ack_deadline is not None:
                times.append(job.ack_deadline)
        times += [
            p.last_seen + s.cfg.pool_lost_after * p.interval_s
            for p in s.view.pools.values()
            if p.alive
        ]
        return min(times) if times else None

    def drop_stale_keepalives(self) -> None:
        """Forget keep-alives of jobs that started or got a newer `queued` since (so that
        `next_wake` does not wake for them)."""
        keepalive = self.s.keepalive
        while keepalive and not self._awaits_keepalive(*keepalive[0]):
            keepalive.popleft()

    def _check_running(self, now: float) -> None:
        """Jobs whose worker did not ack execute in time or went silent: the worker is lost."""
        s = self.s
        for job in list(s.active.values()):
            if s.active.get(job.job_id) is not job:  # ended or requeued with an earlier one's
                continue  # worker (a worker runs several jobs: losing it settles them all)
            if job.phase == "fenced":  # the abandon's answer settles it (the shell's timeout)
                continue
            late_ack = job.ack_deadline is not None and now >= job.ack_deadline
            stalled = now - job.last_activity >= s.cfg.stall_timeout_s
            if not (late_ack or stalled) or job.worker_id is None:
                continue
            if job.worker_id in s.view.workers:
                self.worker_gone(now, job.worker_id, "worker went silent", kill=True)
            else:  # its worker already left the view: the job must not wait forever
                self.retry_or_fail(now, job, "worker went silent")

    def _expire_deadlines(self, now: float) -> None:
        s = self.s
        while s.deadlines and s.deadlines[0][0] <= now:
            _, job_id = heapq.heappop(s.deadlines)
            job = s.jobs.get(job_id)
            # a retry waiting again has started once: its deadline no longer applies
            if job is not None and job.phase == "queued" and job.exec_seq is None:
                s.fail(now, job, ErrorCode.DEADLINE_EXCEEDED, "still queued at its deadline")

    def _keep_waiting_clients(self, now: float) -> None:
        """Re-send `queued` to jobs that heard nothing for the keep-alive: a waiting job is
        never mistaken for a lost one by a client's stall rule."""
        s = self.s
        keep, budget = s.cfg.queued_keepalive_s, KEEPALIVES_PER_TICK
        while s.keepalive and s.keepalive[0][0] + keep <= now and budget > 0:
            budget -= 1  # the rest are still due: next_wake asks for another tick at once
            sent_at, job_id = s.keepalive.popleft()
            if self._awaits_keepalive(sent_at, job_id):
                job = s.jobs[job_id]
                s.emit_queued(job, job.reported_position, now)

    def _awaits_keepalive(self, sent_at: float, job_id: str) -> bool:
        """Still waiting, never started, and no newer `queued` went out since `sent_at`."""
        job = self.s.jobs.get(job_id)
        return (
            job is not None
            and job.phase == "queued"
            and job.exec_seq is None
            and job.queued_at == sent_at
        )

    # ---- losses and retries --------------------------------------------------------------
    def pool_lost(self, now: float, pool_id: str, reason: str) -> None:
        """Out of placement until it heartbeats again; its jobs are fenced and retried."""
        s = self.s
        s.view.pools[pool_id].alive = False
        for worker in [w for w in s.view.workers.values() if w.pool_id == pool_id]:
            # its workers may live on (only the pool died) and stream: fence their jobs
            self.worker_gone(now, worker.worker_id, reason, fence=True)

    def spawn_refused(self, now: float, worker_id: str, code: ErrorCode, message: str) -> None:
        if code == ErrorCode.UNAVAILABLE:
            self._pool_unreachable(now, worker_id)
        else:
            self.spawn_failed(now, worker_id, f"{code}: {message}")

    def _pool_unreachable(self, now: float, worker_id: str) -> None:
        """Nobody answered a spawn: the pool is gone or restarting, which says nothing about the
        model. The pool counts as lost at once (no further spawns go to it) and the waiting
        jobs keep waiting for it, or another pool, to heartbeat (their deadlines still hold)."""
        worker = self.s.view.remove(worker_id)
        if worker is not None and worker.pool_id in self.s.view.pools:
            self.pool_lost(now, worker.pool_id, f"pool {worker.pool_id} does not answer")

    def worker_gone(
        self, now: float, worker_id: str, reason: str, kill: bool = False, fence: bool = False
    ) -> None:
        """A worker is lost; `kill` when it may still be alive (silent, refused execute) and its
        pool can kill it; `fence` when it may be alive and nobody can kill it (its pool is lost):
        its job is retried only once it has stopped streaming."""
        s = self.s
        worker = s.view.workers.get(worker_id)
        if worker is None:
            return
        if worker.phase == "starting":
            self.spawn_failed(now, worker_id, reason, kill=kill)
            return
        s.view.remove(worker_id)
        if kill:
            s.send_stop(worker, drain=False, reason="lost")
        for job_id in sorted(worker.jobs):
            job = s.jobs.get(job_id)
            if job is None or job.worker_id != worker_id:
                continue
            if fence:
                job.phase, job.ack_deadline = "fenced", None
                s.out.append(AbandonOnWorker(worker_id, job.job_id))
            else:
                self.retry_or_fail(now, job, reason)

    def fence_lifted(self, now: float, job_id: str, worker_id: str) -> None:
        """The worker of a fenced job no longer streams it: retry it (or fail it) now."""
        job = self.s.jobs.get(job_id)
        if job is not None and job.phase == "fenced" and job.worker_id == worker_id:
            reason = f"the pool of worker {worker_id} was lost"
            self.retry_or_fail(now, job, reason, ErrorCode.POOL_LOST)

    def abandoned(self, now: float, job: Job, status: JobStatus) -> None:
        """The job's worker stopped it without a terminal event (its pool died, or we asked):
        the stream is the orchestrator's to finish, after `status.seq`."""
        if job.phase == "fenced":
            self.fence_lifted(now, job.job_id, status.worker_id)
            return
        if self.s.view.remove(status.worker_id) is not None:
            self.s.give_up(status.worker_id)  # it exits (its pool died): never adopt it again
        code = status.code or ErrorCode.WORKER_LOST
        self.retry_or_fail(now, job, f"its worker abandoned it ({code})", code)

    def retry_or_fail(
        self, now: float, job: Job, reason: str, code: ErrorCode = ErrorCode.WORKER_LOST
    ) -> None:
        s = self.s
        if job.cancel_requested:
            s.fail(now, job, ErrorCode.CANCELLED, "cancelled by client")
        elif job.attempts < s.cfg.max_job_attempts:
            s.requeue(now, job)
        else:
            s.fail(now, job, code, f"worker lost mid-job: {reason}")

    def spawn_failed(self, now: float, worker_id: str, message: str, kill: bool = False) -> None:
        """A worker did not start. Placement (`placement.decide`) starts another for the jobs
        that wait, on a device that has not failed yet if there is one; after
        MAX_SPAWN_FAILURES in a row with no worker of the model left, its waiting jobs fail."""
        s = self.s
        worker = s.view.workers.get(worker_id)
        if worker is None:
            return
        if worker.phase != "starting":  # a loaded worker failed: that is a loss, not a spawn
            self.worker_gone(now, worker_id, message)
            return
        s.view.remove(worker_id)
        if kill:
            s.send_stop(worker, drain=False, reason="spawn-timeout")
        failures = s.spawn_failures.setdefault(worker.model, [])
        failures.append((worker.pool_id, worker.device))
        if len(failures) < MAX_SPAWN_FAILURES or s.view.workers_of(worker.model):
            return  # another start, or the model's other workers, will serve the waiting jobs
        del s.spawn_failures[worker.model]  # the next job of the model gets fresh tries
        for _, job_id in list(s.queue.head(worker.model, len(s.queue))):
            s.fail(now, s.jobs[job_id], ErrorCode.WORKER_START_FAILED, message)
