"""Where a new worker goes: filters that keep reasons, a scorer, and an eviction planner.

All pure functions of the cluster view, so "why is my job still queued?" has an answer.
"""

from dataclasses import dataclass

from .view import ClusterView


@dataclass(frozen=True, slots=True)
class Slot:
    pool_id: str
    device: int
    kind: str
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
        for d in sorted(p.devices.values(), key=lambda d: d.index):
            if device is not None and d.index != device:
                continue
            need = view.estimate(model, d.kind)
            kept.append(Slot(p.pool_id, d.index, d.kind, need, view.available(p.pool_id, d.index)))
    if pool is not None and pool not in view.pools:
        reasons.append(f"pinned pool {pool} is unknown")
    return kept, reasons


def can_ever_fit(candidates: list[Slot], view: ClusterView) -> bool:
    return any(s.need <= view.pools[s.pool_id].devices[s.device].total_bytes for s in candidates)


def best_slot(candidates: list[Slot], strategy: str) -> tuple[Slot | None, list[str]]:
    fits = [s for s in candidates if s.need <= s.available]
    reasons = [
        f"{s.pool_id}/{s.device}: needs {s.need >> 20} MiB, {s.available >> 20} MiB available"
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
