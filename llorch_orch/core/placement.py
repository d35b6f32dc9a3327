"""Placement: what to do for a waiting job, decided in one place, always with reasons.

`decide` answers for one job: dispatch it to an idle worker, start a worker where, evict whom,
or wait, and why. It is built from filters that keep reasons (`slots`), a scorer
(`best_slot`) and an eviction planner, all pure functions of the cluster view, so "why is my
job still queued?" always has a current answer (`llorch job ID`, `llorch state`).
"""

from collections import Counter
from dataclasses import dataclass

from schemas import GenerateRequest

from .config import OrchConfig
from .view import ClusterView, WorkerRec, pick_open

MAX_SPAWN_FAILURES = 2  # failed starts of a model in a row before its waiting jobs fail


@dataclass(frozen=True, slots=True)
class Slot:
    pool_id: str
    device: int
    kind: str
    slots: int  # the jobs a worker of the model would run at once there (its KV cache)
    need: int  # bytes the worker is budgeted
    available: int  # bytes free for llorch on that device now


@dataclass(frozen=True, slots=True)
class Eviction:
    slot: Slot
    victims: list[str]  # idle worker ids, least recently used first


def slots(
    view: ClusterView, model: str, pool: str | None, device: int | None
) -> tuple[list[Slot], list[str]]:
    """Every device that could host the model, and why the others cannot."""
    kept: list[Slot] = []
    reasons: list[str] = []
    for p in sorted(view.pools.values(), key=lambda p: p.pool_id):
        if pool is not None and p.pool_id != pool:
            continue
        if not p.alive:
            reasons.append(f"pool {p.pool_id} is lost")
            continue
        if model not in p.models:
            reasons.append(f"pool {p.pool_id} has no file for {model}")
            continue
        if device is not None and device not in p.devices:
            reasons.append(f"pool {p.pool_id} has no device {device}")
            continue
        for d in sorted(p.devices.values(), key=lambda d: d.index):
            if device is not None and d.index != device:
                continue
            n = view.slots_for(model, d.kind, d.total_bytes)
            need = view.estimate(model, d.kind, n)
            available = view.available(p.pool_id, d.index)
            kept.append(Slot(p.pool_id, d.index, d.kind, n, need, available))
    if pool is not None and pool not in view.pools:
        reasons.append(f"pinned pool {pool} is unknown")
    return kept, reasons


def too_small(candidates: list[Slot], view: ClusterView) -> list[str]:
    """Why no candidate could ever host the model, even empty; [] when one could."""
    reasons = []
    for s in candidates:
        total = view.pools[s.pool_id].devices[s.device].total_bytes
        if s.need <= total:
            return []
        reasons.append(
            f"device {s.pool_id}/{s.device}: needs {s.need >> 20} MiB, has {total >> 20} MiB in all"
        )
    return reasons


def best_slot(candidates: list[Slot], strategy: str) -> tuple[Slot | None, list[str]]:
    fits = [s for s in candidates if s.need <= s.available]
    reasons = [
        f"device {s.pool_id}/{s.device}: needs {s.need >> 20} MiB, {s.available >> 20} MiB free"
        for s in candidates
        if s.need > s.available
    ]
    if not fits:
        return None, reasons
    if strategy == "spread":
        return max(fits, key=lambda s: (s.available, s.pool_id, -s.device)), reasons
    return min(fits, key=lambda s: (s.available - s.need, s.pool_id, s.device)), reasons


def plan_eviction(view: ClusterView, candidates: list[Slot]) -> Eviction | None:
    """Fewest least-recently-used idle workers whose stop frees enough on one device.

    Workers already draining count as freed: they are on their way out, so a device they
    will clear needs no further victim (None then means "wait", not "evict more").
    """
    best: Eviction | None = None
    for slot in candidates:
        on_device = view.device_workers(slot.pool_id, slot.device)
        leaving = sum(w.reserved for w in on_device if w.phase == "draining")
        if slot.available + leaving >= slot.need:
            return None
        idle = sorted(
            (w for w in on_device if w.phase == "idle"), key=lambda w: (w.last_used, w.worker_id)
        )
        freed, victims = slot.available + leaving, []
        for w in idle:
            if freed >= slot.need:
                break
            victims.append(w.worker_id)
            freed += w.reserved
        if freed >= slot.need and victims and (best is None or len(victims) < len(best.victims)):
            best = Eviction(slot, victims)
    return best


def clearing(view: ClusterView, candidates: list[Slot]) -> tuple[Slot, list[str]] | None:
    """A device that will have room once the workers draining off it have stopped."""
    for slot in candidates:
        on_device = view.device_workers(slot.pool_id, slot.device)
        leaving = [w for w in on_device if w.phase == "draining"]
        if leaving and slot.available + sum(w.reserved for w in leaving) >= slot.need:
            return slot, sorted(w.worker_id for w in leaving)
    return None


# ---- the decision ----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Dispatch:
    worker: WorkerRec


@dataclass(frozen=True, slots=True)
class StartWorker:
    slot: Slot
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Evict:
    victims: tuple[str, ...]  # idle workers to stop, least recently used first
    reasons: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Wait:
    reasons: tuple[str, ...]
    claim: str | None = None  # the loading worker it waits for (no other job waits for it)


Decision = Dispatch | StartWorker | Evict | Wait


def decide(
    view: ClusterView,
    cfg: OrchConfig,
    req: GenerateRequest,
    claimed: Counter[str],
    failed: list[tuple[str, int]],
) -> Decision:
    """What to do now for a waiting job of `req`. `claimed`: how many earlier jobs of this pass
    wait for each loading worker (it will serve as many as it has slots); `failed`: devices
    where a worker of the model failed to start since it last had one ready (tried last)."""
    model, pool, device = req.model, req.pool, req.device
    open_ = view.open_workers(model)
    worker = pick_open(open_, pool, device)
    if worker is not None:
        return Dispatch(worker)
    for w in sorted(view.in_phase(model, "starting"), key=lambda w: w.worker_id):
        if w.matches(pool, device) and claimed[w.worker_id] < w.slots:
            where = f"{w.pool_id}/{w.device}"
            return Wait((f"waiting for {w.worker_id} to load on {where}",), w.worker_id)
    live, cap = view.live_count(model), view.max_workers(model)
    if live >= cap:
        return Wait(_at_cap(view, model, live, cap, bool(open_)))
    candidates, filtered = slots(view, model, pool, device)
    # a replica goes where the model has no worker yet, and not where it failed to start
    untried = [s for s in candidates if (s.pool_id, s.device) not in failed] or candidates
    fresh = [s for s in untried if not _hosts(view, model, s)] or untried
    slot, unfit = best_slot(fresh, cfg.placement)
    if slot is not None:
        where = f"{slot.pool_id}/{slot.device}"
        return StartWorker(slot, (f"starting a worker of {model} on {where}",))
    clears = clearing(view, candidates)
    if clears is not None:
        slot, leaving = clears
        where = f"{slot.pool_id}/{slot.device}"
        return Wait((f"waiting for {', '.join(leaving)} to stop on {where}",))
    eviction = plan_eviction(view, candidates)
    if eviction is not None:
        where = f"{eviction.slot.pool_id}/{eviction.slot.device}"
        victims = tuple(eviction.victims)
        return Evict(victims, (f"evicting {', '.join(victims)} on {where} to make room",))
    if not candidates and not filtered:
        filtered = [f"no live pool holds {model}"]
    return Wait(tuple(filtered + unfit))


def _hosts(view: ClusterView, model: str, slot: Slot) -> bool:
    workers = view.device_workers(slot.pool_id, slot.device)
    return any(w.model == model and w.phase != "draining" for w in workers)


def _at_cap(view: ClusterView, model: str, live: int, cap: int, open_: bool) -> tuple[str, ...]:
    """Why a job waits when its model has all the workers it may have (max_workers)."""
    slots = sum(w.slots for w in view.workers_of(model) if w.phase != "starting")
    parts = [f"{live}/{cap} workers of {model}"]
    if slots:
        parts.append(f"{slots}/{slots} slots busy")
    if view.in_phase(model, "starting"):
        parts.append("the rest loading for earlier jobs" if slots else "loading for earlier jobs")
    reason = ", ".join(parts)
    if open_:
        reason += "; the free slots are off its pinned pool/device"
    return (reason,)
