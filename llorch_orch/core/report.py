"""The core's state as wire messages for `api.state` and `api.models`."""

from schemas import CatalogEntry, ClusterState, ModelsReply, PoolView, WorkerInfo
from schemas.control import WorkerState

from .brain import Core
from .tenancy import ANYONE, Caller
from .view import WorkerRec

_PHASE_TO_STATE: dict[str, WorkerState] = {
    "starting": "starting",
    "idle": "ready",
    "busy": "busy",
    "draining": "draining",
}


def _worker_info(w: WorkerRec) -> WorkerInfo:
    state = _PHASE_TO_STATE[w.phase]
    return WorkerInfo(
        worker_id=w.worker_id,
        model=w.model,
        device=w.device,
        pid=None,
        state=state,
        memory_bytes=w.memory_bytes,
        slots=w.slots,
        slots_busy=len(w.jobs) + w.foreign,
    )


def cluster_state(core: Core, now: float, caller: Caller = ANYONE) -> ClusterState:
    """Pools, devices and workers as they are; of the jobs, only those `caller` may see."""
    pools = []
    for pool in sorted(core.view.pools.values(), key=lambda p: p.pool_id):
        workers = [
            _worker_info(w)
            for w in sorted(core.view.workers.values(), key=lambda w: w.worker_id)
            if w.pool_id == pool.pool_id
        ]
        pools.append(
            PoolView(
                pool_id=pool.pool_id,
                alive=pool.alive,
                last_seen_ms_ago=round((now - pool.last_seen) * 1000, 1),
                devices=[pool.devices[i] for i in sorted(pool.devices)],
                workers=workers,
            )
        )
    queue, running = core.queued_infos(caller=caller), core.running_infos(caller)
    return ClusterState(pools=pools, queue=queue, running=running, recent=core.recent_infos(caller))


def models(core: Core) -> ModelsReply:
    entries = []
    for name, (info, pools) in sorted(core.view.catalog().items()):
        devices = [d for p in pools for d in core.view.pools[p].devices.values()]
        kind = "gpu" if any(d.kind == "gpu" for d in devices) else "cpu"
        largest = max((d.total_bytes for d in devices if d.kind == kind), default=0)
        slots = core.view.slots_for(name, kind, largest)  # a worker on its largest device
        entries.append(
            CatalogEntry(
                model=info,
                pools=sorted(pools),
                est_bytes=core.view.estimate(name, kind, slots),
                measured=(name, kind, slots) in core.view.measured,
                n_ctx=core.view.n_ctx(name),
            )
        )
    return ModelsReply(models=entries)
