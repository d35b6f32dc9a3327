"""The orchestrator's picture of the cluster, built from heartbeats and worker messages."""

from dataclasses import dataclass, field
from typing import Literal

from schemas import Device, ModelInfo

from .config import OrchConfig

WorkerPhase = Literal["starting", "idle", "busy", "draining"]


@dataclass(slots=True)
class WorkerRec:
    worker_id: str
    pool_id: str
    model: str
    device: int
    phase: WorkerPhase
    est_bytes: int  # budgeted memory until the worker reports its measured footprint
    memory_bytes: int | None = None  # measured
    last_used: float = 0.0  # when it last finished (or became ready): LRU order
    spawn_deadline: float | None = None  # while starting
    spawn_attempt: int = 1
    job_id: str | None = None  # while busy
    pin_pool: str | None = None  # pin of the job it was spawned for (a spawn retry keeps it)
    pin_device: int | None = None
    seen: bool = False  # listed by a heartbeat or ready: only then does its absence mean loss

    def matches(self, pool: str | None, device: int | None) -> bool:
        """Whether a job pinned to `pool`/`device` (None = any) may run here."""
        return (pool is None or self.pool_id == pool) and (device is None or self.device == device)

    @property
    def reserved(self) -> int:
        return self.memory_bytes if self.memory_bytes is not None else self.est_bytes


@dataclass(slots=True)
class PoolRec:
    pool_id: str
    last_seen: float
    interval_s: float
    devices: dict[int, Device] = field(default_factory=dict)
    models: dict[str, ModelInfo] = field(default_factory=dict)
    alive: bool = True


@dataclass(slots=True)
class ClusterView:
    cfg: OrchConfig
    pools: dict[str, PoolRec] = field(default_factory=dict)
    workers: dict[str, WorkerRec] = field(default_factory=dict)
    measured: dict[tuple[str, str], int] = field(default_factory=dict)  # (model, kind) -> bytes

    def model_info(self, name: str) -> ModelInfo | None:
        for pool in self.pools.values():
            if pool.alive and name in pool.models:
                return pool.models[name]
        return None

    def catalog(self) -> dict[str, tuple[ModelInfo, list[str]]]:
        out: dict[str, tuple[ModelInfo, list[str]]] = {}
        for pool in self.pools.values():
            if not pool.alive:
                continue
            for name, info in pool.models.items():
                out.setdefault(name, (info, []))[1].append(pool.pool_id)
        return out

    def n_ctx(self, model: str) -> int:
        info = self.model_info(model)
        wanted = self.cfg.model(model).n_ctx
        return min(wanted, info.n_ctx_train) if info and info.n_ctx_train else wanted

    def estimate(self, model: str, kind: str) -> int:
        """Learned footprint if a worker of this model reported one, else the GGUF estimate."""
        learned = self.measured.get((model, kind))
        if learned is not None:
            return learned
        info = self.model_info(model)
        if info is None:
            return 0
        overhead = self.cfg.gpu_overhead_bytes if kind == "gpu" else self.cfg.cpu_overhead_bytes
        return info.size_bytes + info.kv_bytes_per_token * self.n_ctx(model) + overhead

    def device_workers(self, pool_id: str, index: int) -> list[WorkerRec]:
        return [w for w in self.workers.values() if w.pool_id == pool_id and w.device == index]

    def available(self, pool_id: str, index: int) -> int:
        """min(NVML free - not-yet-loaded starters, total - llorch's reservations), never < 0."""
        device = self.pools[pool_id].devices[index]
        workers = self.device_workers(pool_id, index)
        starting = sum(w.est_bytes for w in workers if w.memory_bytes is None)
        reserved = sum(w.reserved for w in workers)
        return max(0, min(device.free_bytes - starting, device.total_bytes - reserved))

    def workers_of(self, model: str) -> list[WorkerRec]:
        return [w for w in self.workers.values() if w.model == model and w.phase != "draining"]

    def idle_workers(self, model: str) -> list[WorkerRec]:
        return [w for w in self.workers.values() if w.phase == "idle" and w.model == model]

    def idle_worker(self, model: str, pool: str | None, device: int | None) -> WorkerRec | None:
        return pick_idle(self.idle_workers(model), pool, device)


def pick_idle(idle: list[WorkerRec], pool: str | None, device: int | None) -> WorkerRec | None:
    """Least recently used idle worker (spreads wear) that the pins allow, ties by id."""
    best: WorkerRec | None = None
    for w in idle:
        if not w.matches(pool, device):
            continue
        if best is None or (w.last_used, w.worker_id) < (best.last_used, best.worker_id):
            best = w
    return best
