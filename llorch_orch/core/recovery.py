"""Time-driven and failure paths of the brain: timeouts, lost workers and pools, retries."""

import heapq
from typing import TYPE_CHECKING

from schemas.codes import ErrorCode

from .jobs import Job
from .placement import best_slot, slots

if TYPE_CHECKING:
    from .brain import Core

    _Base = Core
else:
    _Base = object


class RecoveryMixin(_Base):
    def _tick(self, now: float) -> None:
        self._expire_deadlines(now)
        for worker in list(self.view.workers.values()):
            if worker.spawn_deadline is not None and now >= worker.spawn_deadline:
                self._stop(worker.worker_id, drain=False, reason="spawn-timeout")
                self._spawn_failed(now, worker.worker_id, "did not become ready in time")
            elif worker.phase == "idle":
                keep = self.cfg.model(worker.model).keep_alive_s
                if keep > 0 and now - worker.last_used >= keep:
                    self._stop(worker.worker_id, drain=True, reason="keep-alive")
        for job in [j for j in self.jobs.values() if j.phase != "queued"]:
            late_ack = job.ack_deadline is not None and now >= job.ack_deadline
            stalled = now - job.last_activity >= self.cfg.stall_timeout_s
            if (late_ack or stalled) and job.worker_id is not None:
                self._worker_gone(now, job.worker_id, "worker went silent")
        for pool in self.view.pools.values():
            if pool.alive and now - pool.last_seen >= self.cfg.pool_lost_after * pool.interval_s:
                pool.alive = False
                for worker in [w for w in self.view.workers.values() if w.pool_id == pool.pool_id]:
                    self._worker_gone(now, worker.worker_id, f"pool {pool.pool_id} lost")

    def _expire_deadlines(self, now: float) -> None:
        while self._deadlines and self._deadlines[0][0] <= now:
            _, job_id = heapq.heappop(self._deadlines)
            job = self.jobs.get(job_id)
            if job is not None and job.phase == "queued":
                self._fail(job, ErrorCode.DEADLINE_EXCEEDED, "still queued at its deadline")

    def next_wake(self) -> float | None:
        """Earliest time at which a Tick may change something."""
        times: list[float] = []
        if self._deadlines:
            times.append(self._deadlines[0][0])
        for w in self.view.workers.values():
            if w.spawn_deadline is not None:
                times.append(w.spawn_deadline)
            elif w.phase == "idle" and self.cfg.model(w.model).keep_alive_s > 0:
                times.append(w.last_used + self.cfg.model(w.model).keep_alive_s)
        for job in self.jobs.values():
            if job.phase != "queued":
                times.append(job.last_activity + self.cfg.stall_timeout_s)
                if job.ack_deadline is not None:
                    times.append(job.ack_deadline)
        times += [
            p.last_seen + self.cfg.pool_lost_after * p.interval_s
            for p in self.view.pools.values()
            if p.alive
        ]
        return min(times) if times else None

    def _worker_gone(self, now: float, worker_id: str, reason: str) -> None:
        worker = self.view.workers.pop(worker_id, None)
        if worker is None:
            return
        if worker.phase == "starting":
            self.view.workers[worker_id] = worker  # _spawn_failed owns starting workers
            self._spawn_failed(now, worker_id, reason)
            return
        job = self.jobs.get(worker.job_id) if worker.job_id else None
        if job is not None and job.worker_id == worker_id:
            self._retry_or_fail(job, reason)

    def _retry_or_fail(self, job: Job, reason: str) -> None:
        if job.cancel_requested:
            self._fail(job, ErrorCode.CANCELLED, "cancelled by client")
        elif job.attempts < self.cfg.max_job_attempts:
            self._requeue(job)
        else:
            self._fail(job, ErrorCode.WORKER_LOST, f"worker lost mid-job: {reason}")

    def _requeue(self, job: Job) -> None:
        """Back to the head of its lane; the retry resumes the stream after `last_seq`."""
        job.phase, job.worker_id, job.ack_deadline = "queued", None, None
        self.queue.push(job.job_id, job.request.model, job.request.priority, front=True)

    def _spawn_failed(self, now: float, worker_id: str, message: str) -> None:
        worker = self.view.workers.pop(worker_id, None)
        if worker is None or worker.phase != "starting":
            return
        if worker.spawn_attempt < 2:
            candidates, _ = slots(self.view, worker.model, None, None)
            others = [
                s for s in candidates if (s.pool_id, s.device) != (worker.pool_id, worker.device)
            ]
            slot, _ = best_slot(others or candidates, self.cfg.placement)
            if slot is not None:
                self._spawn(now, worker.model, slot.pool_id, slot.device, slot.need, attempt=2)
                return
        if self.view.workers_of(worker.model):
            return  # other workers of the model will serve the waiting jobs
        for _, job_id in list(self.queue.head(worker.model, len(self.queue))):
            self._fail(self.jobs[job_id], ErrorCode.WORKER_START_FAILED, message)
