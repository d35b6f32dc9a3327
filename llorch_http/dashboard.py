"""What the dashboard shows, computed from `api.state` and `api.models`: the page only draws
it. Pure, so every figure on the page is tested here rather than in a browser."""

from __future__ import annotations

from typing import Any

from schemas import (
    CatalogEntry,
    ClusterState,
    Device,
    JobInfo,
    Leadership,
    PoolView,
    WorkerInfo,
)

# Workers whose memory is held or promised on their device (an exited one holds nothing).
_HOLDING = {"starting", "ready", "busy", "draining"}


def view(state: ClusterState, catalog: list[CatalogEntry], now: float) -> dict[str, Any]:
    """The page's data: plain JSON, every absent figure None (the page shows a dash)."""
    budget = {e.model.name: e.est_bytes for e in catalog}
    return {
        "now": now,
        "pools": [_pool(p, budget) for p in state.pools],
        "queue": [_waiting(j, now) for j in state.queue],
        "running": [_running(j, now) for j in state.running],
        "recent": [_ended(j) for j in state.recent],
        "leader": None if state.leader is None else _leader(state.leader, now),
    }


def _leader(lead: Leadership, now: float) -> dict[str, Any]:
    """Which orchestrator answered (only the leader does), and for how long it has led."""
    return {"name": lead.orchestrator, "epoch": lead.epoch, "for_s": max(now - lead.since, 0.0)}


def _pool(pool: PoolView, budget: dict[str, int]) -> dict[str, Any]:
    return {
        "pool_id": pool.pool_id,
        "alive": pool.alive,
        "last_seen_s": pool.last_seen_ms_ago / 1000,
        "devices": [_device(d, pool.workers, budget) for d in pool.devices],
        "workers": [_worker(w) for w in pool.workers],
    }


def reserved_bytes(device: Device, workers: list[WorkerInfo], budget: dict[str, int]) -> int:
    """Memory llorch's workers hold on `device` (measured once loaded), or are promised while
    they start (the orchestrator's budget for their model)."""
    return sum(
        w.memory_bytes if w.memory_bytes is not None else budget.get(w.model, 0)
        for w in workers
        if w.device == device.index and w.state in _HOLDING
    )


def _device(device: Device, workers: list[WorkerInfo], budget: dict[str, int]) -> dict[str, Any]:
    return {
        "index": device.index,
        "name": device.name,
        "kind": device.kind,
        "total_bytes": device.total_bytes,
        "used_bytes": device.used_bytes,
        "reserved_bytes": reserved_bytes(device, workers, budget),
    }


def _worker(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "worker_id": worker.worker_id,
        "model": worker.model,
        "device": worker.device,
        "state": worker.state,
        "memory_bytes": worker.memory_bytes,
        "slots": worker.slots,  # jobs it runs at once
        "slots_busy": worker.slots_busy,
    }


def _since(then: float | None, now: float) -> float | None:
    return None if then is None else max(0.0, now - then)


def _waiting(job: JobInfo, now: float) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "model": job.model,
        "priority": job.priority,
        "position": job.position,
        "reasons": job.reasons,
        "waited_s": _since(job.submitted_at, now),
        "attempts": job.attempts,
    }


def _running(job: JobInfo, now: float) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "model": job.model,
        "priority": job.priority,
        "worker_id": job.worker_id,
        "running_s": _since(job.started_at, now),
        "attempts": job.attempts,
    }


def tokens_per_s(job: JobInfo) -> float | None:
    """Decode speed: tokens out over the time from the first token to the end (dispatch to
    end, less the TTFT), as `llorch generate` reports it."""
    tokens, start, end, ttft_ms = job.tokens_out, job.started_at, job.ended_at, job.ttft_ms
    if tokens is None or start is None or end is None or ttft_ms is None or tokens <= 0:
        return None
    decoding = end - start - ttft_ms / 1000
    return tokens / decoding if decoding > 0 else None


def _ended(job: JobInfo) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "model": job.model,
        "priority": job.priority,
        "state": job.state,
        "code": job.code,
        "ended_at": job.ended_at,
        "ttft_ms": job.ttft_ms,
        "tokens_in": job.tokens_in,
        "tokens_out": job.tokens_out,
        "tokens_per_s": tokens_per_s(job),
    }
