"""The pool's metrics (docs/observability.md). Gauges read the last heartbeat: what the
orchestrator was told is what Prometheus sees, and a scrape never touches NVML or the registry
from the exporter's thread."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation

from llorch_common import tracing
from llorch_common.observe import SECONDS_BUCKETS
from schemas import Heartbeat

tracer = tracing.tracer("llorch.pool")
_meter = metrics.get_meter("llorch.pool")
spawn_duration = _meter.create_histogram(
    "llorch.pool.spawn.duration",
    "s",
    "Process start to the worker's ready; outcome: ready, failed (reported) or exited (died)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)

# (heartbeat, bytes held or promised by llorch's workers per device index)
Snapshot = tuple[Heartbeat, dict[int, int]]


def observe(snapshot: Callable[[], Snapshot | None]) -> None:
    """Register the gauges; `snapshot` returns what the last heartbeat carried."""

    def memory(_: CallbackOptions) -> Iterable[Observation]:
        last = snapshot()
        if last is None:
            return []
        beat, reserved = last
        out = []
        for d in beat.devices:
            labels: dict[str, Any] = {"pool": beat.pool_id, "device": d.index, "kind": d.kind}
            out += [
                Observation(d.total_bytes, {**labels, "memory": "total"}),
                Observation(d.used_bytes, {**labels, "memory": "used"}),
                Observation(reserved.get(d.index, 0), {**labels, "memory": "reserved"}),
            ]
        return out

    def workers(_: CallbackOptions) -> Iterable[Observation]:
        last = snapshot()
        if last is None:
            return []
        counts: dict[tuple[str, str], int] = {}
        for w in last[0].workers:
            counts[(w.state, w.model)] = counts.get((w.state, w.model), 0) + 1
        pool = last[0].pool_id
        return [
            Observation(n, {"pool": pool, "state": s, "model": m}) for (s, m), n in counts.items()
        ]

    _meter.create_observable_gauge(
        "llorch.pool.device.memory",
        [memory],
        "By",
        "Device memory: total, used (by anything) and reserved by llorch's workers",
    )
    _meter.create_observable_gauge(
        "llorch.pool.workers", [workers], "{worker}", "Workers of this pool by state and model"
    )
