"""The orchestrator's picture of the cluster, built from heartbeats and worker messages."""

from dataclasses import dataclass, field
from typing import Literal

from schemas import Device, ModelInfo

from .config import CPU_SLOTS, GPU_SLOTS, OrchConfig

# idle: no job; busy: at least one job (it may still have free slots)
WorkerPhase = Literal["starting", "idle", "busy", "draining"]
_PHASES: tuple[WorkerPhase, ...] = ("starting", "idle", "busy", "draining")


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
    slots: int = 1  # jobs it runs at once: as requested until it reports its own
    jobs: set[str] = field(default_factory=set)  # ours it runs
    foreign: int = 0  # slots busy with jobs we do not track (an adopted worker's)
    pin_pool: str | None = None  # pin of the job it was spawned for (a spawn retry keeps it)
    pin_device: int | None = None
    seen: bool = False  # listed by a heartbeat or ready: only then does its absence mean loss

    def matches(self, pool: str | None, device: int | None) -> bool:
        """Whether a job pinned to `pool`/`device` (None = any) may run here."""
        return (pool is None or self.pool_id == pool) and (device is None or self.device == device)

    @property
    def reserved(self) -> int:
        return self.memory_bytes if self.memory_bytes is not None else self.est_bytes

    @property
    def free(self) -> int:
        """Slots a new job may take now."""
        return max(0, self.slots - len(self.jobs) - self.foreign)


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
    workers: dict[str, WorkerRec] = field(default_factory=dict)  # read-only: use add/remove
    # (model, device kind, slots) -> bytes: the largest footprint a worker of it reported
    measured: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # model -> phase -> workers: scheduling looks at one model's idle or starting workers
    # without a pass over every worker (1,000 workers: ~100 -> ~20 us per decision)
    _by_phase: dict[str, dict[WorkerPhase, dict[str, WorkerRec]]] = field(default_factory=dict)
    # model -> loaded workers (idle or busy) with a free slot: where a job may go now
    _open: dict[str, dict[str, WorkerRec]] = field(default_factory=dict)

    def add(self, worker: WorkerRec) -> WorkerRec:
        self.remove(worker.worker_id)
        self.workers[worker.worker_id] = worker
        self._phases(worker.model)[worker.phase][worker.worker_id] = worker
        self._index(worker)
        return worker

    def remove(self, worker_id: str) -> WorkerRec | None:
        worker = self.workers.pop(worker_id, None)
        if worker is not None:
            del self._phases(worker.model)[worker.phase][worker_id]
            self._open.get(worker.model, {}).pop(worker_id, None)
        return worker

    def set_phase(self, worker: WorkerRec, phase: WorkerPhase) -> None:
        """The only way a worker changes phase, so the index stays true."""
        phases = self._phases(worker.model)
        del phases[worker.phase][worker.worker_id]
        worker.phase = phase
        phases[phase][worker.worker_id] = worker
        self._index(worker)

    def assign(self, worker: WorkerRec, job_id: str) -> None:
        worker.jobs.add(job_id)
        self.set_phase(worker, "busy")

    def release(self, worker: WorkerRec, job_id: str, now: float) -> None:
        """`job_id` no longer runs there; a worker left with no job is idle (and the most
        recently used)."""
        worker.jobs.discard(job_id)
        self.recount(worker, worker.foreign, now)

    def recount(self, worker: WorkerRec, foreign: int, now: float) -> None:
        """Its slots busy with jobs we do not track, as its pool last reported (or we saw)."""
        worker.foreign = max(0, foreign)
        if worker.phase not in ("idle", "busy"):
            self._index(worker)
            return
        busy = bool(worker.jobs) or worker.foreign > 0
        if worker.phase == "busy" and not busy:
            worker.last_used = now
        self.set_phase(worker, "busy" if busy else "idle")

    def _index(self, worker: WorkerRec) -> None:
        serving = worker.phase in ("idle", "busy") and worker.free > 0
        open_ = self._open.setdefault(worker.model, {})
        if serving:
            open_[worker.worker_id] = worker
        else:
            open_.pop(worker.worker_id, None)

    def _phases(self, model: str) -> dict[WorkerPhase, dict[str, WorkerRec]]:
        phases = self._by_phase.get(model)
        if phases is None:
            phases = self._by_phase[model] = {p: {} for p in _PHASES}
        return phases

    def in_phase(self, model: str, phase: WorkerPhase) -> list[WorkerRec]:
        return list(self._phases(model)[phase].values())

    def live_count(self, model: str) -> int:
        """Workers of the model that count against max_workers (all but draining ones)."""
        phases = self._phases(model)
        return len(phases["starting"]) + len(phases["idle"]) + len(phases["busy"])

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

    def max_workers(self, model: str) -> int:
        """Its configured cap, or (0) one per device that holds its file."""
        return self.cfg.model(model).max_workers or max(1, self.devices_holding(model))

    def n_ctx(self, model: str) -> int:
        info = self.model_info(model)
        wanted = self.cfg.model(model).n_ctx
        return min(wanted, info.n_ctx_train) if info and info.n_ctx_train else wanted

    def estimate(self, model: str, kind: str, slots: int) -> int:
        """Learned footprint if a worker of this model with as many slots reported one on such
        a device, else the GGUF estimate."""
        learned = self.measured.get((model, kind, slots))
        if learned is not None:
            return learned
        info = self.model_info(model)
        if info is None:
            return 0
        overhead = self.cfg.gpu_overhead_bytes if kind == "gpu" else self.cfg.cpu_overhead_bytes
        kv = info.kv_bytes_per_token * self.n_ctx(model) * slots
        return info.size_bytes + kv + overhead

    def slots_for(self, model: str, kind: str, total_bytes: int) -> int:
        """The slots of a worker of `model` on a device of `kind` with `total_bytes`: as
        configured, else by device: the most of config.GPU_SLOTS (on a CPU, CPU_SLOTS) whose
        worker fits the device's memory, the fewest if none does."""
        if configured := self.cfg.model(model).slots:
            return configured
        choices = GPU_SLOTS if kind == "gpu" else CPU_SLOTS
        fitting = (n for n in choices if self.estimate(model, kind, n) <= total_bytes)
        return next(fitting, choices[-1])

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
        """Workers of the model that are or will be able to serve (all but draining ones)."""
        phases = self._phases(model)
        return [*phases["starting"].values(), *phases["idle"].values(), *phases["busy"].values()]

    def open_workers(self, model: str) -> list[WorkerRec]:
        """Loaded workers of the model with a free slot."""
        return list(self._open.get(model, {}).values())

    def open_worker(self, model: str, pool: str | None, device: int | None) -> WorkerRec | None:
        return pick_open(self.open_workers(model), pool, device)

    def devices_holding(self, model: str) -> int:
        """Devices of the live pools that hold the model's file."""
        return sum(len(p.devices) for p in self.pools.values() if p.alive and model in p.models)


def pick_open(open_: list[WorkerRec], pool: str | None, device: int | None) -> WorkerRec | None:
    """The worker with the most free slots that the pins allow; ties: least recently used
    (spreads wear), then id."""
    best: WorkerRec | None = None
    for w in open_:
        if not w.matches(pool, device):
            continue
        if best is None or (-w.free, w.last_used, w.worker_id) < (
            -best.free,
            best.last_used,
            best.worker_id,
        ):
            best = w
    return best
