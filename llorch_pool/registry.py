"""The worker registry as data: records and pure transitions, no I/O.

starting --ready--> ready --stop(drain)--> draining --exit--> exited
(ready and draining workers report their busy slots: WorkerLoad, whenever the count changes)
starting --WorkerFailed--> failed --exit--> failed (exit code added)
starting --exit--> failed when the process dies before it is ready, else exited.
A reaped record stays for REPORTS_AFTER_EXIT heartbeats so a heartbeat lost on the way does not
hide an exit from the orchestrator, then it is dropped.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping
from dataclasses import dataclass, replace

from schemas import ErrorCode, ProtocolError, WorkerInfo, check_id
from schemas.control import WorkerState

REPORTS_AFTER_EXIT = 3


@dataclass(frozen=True, slots=True)
class WorkerRecord:
    worker_id: str
    model: str
    device: int
    pid: int | None
    state: WorkerState
    estimate_bytes: int  # assumed until the worker measures it (spawn_checks.need_bytes)
    memory_bytes: int | None = None  # measured, from WorkerReady
    slots: int = 1  # jobs it runs at once, from WorkerReady
    slots_busy: int = 0  # from its latest WorkerLoad
    exit_code: int | None = None  # set once the process is reaped (negative = signal)
    message: str = ""
    reports_left: int = REPORTS_AFTER_EXIT  # heartbeats still to carry it once reaped


def starting(worker_id: str, model: str, device: int, estimate_bytes: int) -> WorkerRecord:
    """Recorded just before the process is created (so its ready message cannot be missed)."""
    return WorkerRecord(worker_id, model, device, None, "starting", estimate_bytes)


def with_pid(record: WorkerRecord, pid: int) -> WorkerRecord:
    return replace(record, pid=pid)


def is_reaped(record: WorkerRecord) -> bool:
    return record.exit_code is not None


def on_ready(record: WorkerRecord, memory_bytes: int, slots: int = 1) -> WorkerRecord:
    if record.state != "starting":
        return record
    return replace(record, state="ready", memory_bytes=memory_bytes, slots=slots)


def on_load(record: WorkerRecord, slots_busy: int) -> WorkerRecord:
    """A WorkerLoad: only a loaded, living worker runs jobs (a late one changes nothing else)."""
    if record.state not in ("ready", "draining") or is_reaped(record):
        return record
    return replace(record, slots_busy=min(max(slots_busy, 0), record.slots))


def on_failed(record: WorkerRecord, message: str) -> WorkerRecord:
    if record.state != "starting":
        return record
    return replace(record, state="failed", message=message)


def on_draining(record: WorkerRecord) -> WorkerRecord:
    if record.state not in ("starting", "ready"):
        return record
    return replace(record, state="draining")


def exit_message(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def on_exit(record: WorkerRecord, code: int) -> WorkerRecord:
    if is_reaped(record):
        return record
    if record.state == "failed":
        return replace(record, exit_code=code)
    if record.state == "starting":
        return replace(
            record, state="failed", exit_code=code, message=f"{exit_message(code)} before ready"
        )
    return replace(record, state="exited", exit_code=code, message=exit_message(code))


def held_bytes(record: WorkerRecord) -> int:
    """Memory this worker holds or is about to hold on its device."""
    if is_reaped(record):
        return 0
    return record.memory_bytes if record.memory_bytes is not None else record.estimate_bytes


def bytes_by_device(records: Mapping[str, WorkerRecord], loading_only: bool) -> dict[int, int]:
    """Memory per device of live workers; `loading_only` counts only those not yet measured."""
    totals: dict[int, int] = {}
    for record in records.values():
        if loading_only and record.memory_bytes is not None:
            continue
        totals[record.device] = totals.get(record.device, 0) + held_bytes(record)
    return totals


def check_new_id(records: Mapping[str, WorkerRecord], worker_id: str) -> None:
    """An id may be reused only once its previous process has been reaped."""
    check_id(worker_id, "worker id")
    current = records.get(worker_id)
    if current is not None and not is_reaped(current):
        raise ProtocolError(
            ErrorCode.INVALID_PARAMS, f"worker {worker_id} already exists ({current.state})"
        )


def with_measured(
    records: Mapping[str, WorkerRecord], by_pid: Mapping[int, int]
) -> dict[str, WorkerRecord]:
    """Raise each loaded worker's memory to what it holds now: a worker grows after its first
    jobs (CUDA graphs, buffers), and the high-water mark is the honest budget for the next."""
    out = dict(records)
    for worker_id, record in records.items():
        now = by_pid.get(record.pid) if record.pid is not None else None
        if now is not None and record.memory_bytes is not None and now > record.memory_bytes:
            out[worker_id] = replace(record, memory_bytes=now)
    return out


def after_heartbeat(records: Mapping[str, WorkerRecord]) -> dict[str, WorkerRecord]:
    """Count one report against each reaped record; drop those reported enough."""
    kept = {}
    for worker_id, record in records.items():
        if is_reaped(record):
            record = replace(record, reports_left=record.reports_left - 1)
            if record.reports_left <= 0:
                continue
        kept[worker_id] = record
    return kept


def to_wire(record: WorkerRecord) -> WorkerInfo:
    return WorkerInfo(
        worker_id=record.worker_id,
        model=record.model,
        device=record.device,
        pid=record.pid,
        state=record.state,
        memory_bytes=record.memory_bytes,
        exit_code=record.exit_code,
        message=record.message,
        slots=record.slots,
        slots_busy=record.slots_busy,
    )
