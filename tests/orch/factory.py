"""Small builders for core tests: a core, a pool heartbeat, a request (no server)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

from llorch_orch.core import (
    AbandonOnWorker,
    Answered,
    CancelOnWorker,
    Core,
    Emit,
    OrchConfig,
    Output,
    SendExecute,
    Spawn,
    Stop,
)
from llorch_orch.core import events as ev
from llorch_orch.core.config import ModelConfig
from llorch_orch.core.tenancy import ANYONE, Caller
from schemas import (
    CancelReply,
    Device,
    Error,
    GenerateRequest,
    Heartbeat,
    JobStatus,
    ModelInfo,
    Queued,
    WorkerFailed,
    WorkerInfo,
    WorkerReady,
)
from schemas.codes import ErrorCode

MiB = 1024 * 1024
GiB = 1024 * MiB
T0 = 1_000_000.0
C = TypeVar("C")


def model(
    name: str = "m", size: int = 100 * MiB, n_ctx_train: int = 8192, chat: bool = True
) -> ModelInfo:
    return ModelInfo(
        name=name, sha256="0" * 64, size_bytes=size, n_ctx_train=n_ctx_train, n_layers=30,
        kv_bytes_per_token=1024, has_chat_template=chat,
    )  # fmt: skip


def gpu(index: int, total: int = 8 * GiB, free: int | None = None) -> Device:
    free = total if free is None else free
    return Device(
        index=index, uuid=f"GPU-{index}", name="H100", kind="gpu", total_bytes=total,
        free_bytes=free, used_bytes=total - free,
    )  # fmt: skip


def cpu(total: int = 16 * GiB, free: int | None = None) -> Device:
    free = total if free is None else free
    return Device(
        index=0, uuid="CPU", name="cpu", kind="cpu", total_bytes=total, free_bytes=free,
        used_bytes=total - free,
    )  # fmt: skip


def winfo(
    worker_id: str,
    state: str = "ready",
    model_name: str = "m",
    device: int = 0,
    memory: int | None = 300 * MiB,
    message: str = "",
    slots: int = 1,
    slots_busy: int = 0,
) -> WorkerInfo:
    return WorkerInfo(
        worker_id=worker_id, model=model_name, device=device, pid=1, state=state,  # type: ignore[arg-type]
        memory_bytes=memory, message=message, slots=slots, slots_busy=slots_busy,
    )  # fmt: skip


def heartbeat(
    pool: str = "p1",
    now: float = T0,
    devices: list[Device] | None = None,
    workers: list[WorkerInfo] | None = None,
    models: list[ModelInfo] | None = None,
    ts: float | None = None,
    interval_s: float = 2.0,
) -> ev.HeartbeatSeen:
    hb = Heartbeat(
        pool_id=pool, ts=now if ts is None else ts, seq=1, interval_s=interval_s,
        devices=devices or [gpu(0)], workers=workers or [],
        models=models if models is not None else [model()],
    )  # fmt: skip
    return ev.HeartbeatSeen(now, hb)


def request(model_name: str = "m", **kw: object) -> GenerateRequest:
    kw.setdefault("max_tokens", 8)
    if "messages" not in kw:
        kw["prompt"] = str(kw.get("prompt", "hi"))
    return GenerateRequest(model=model_name, **kw)  # type: ignore[arg-type]


def submit(job_id: str, now: float = T0, **kw: object) -> ev.Submit:
    return ev.Submit(now, request(job_id=job_id, **kw), f"_INBOX.{job_id}")


def ready(
    worker_id: str,
    now: float = T0,
    pool: str = "p1",
    memory: int = 300 * MiB,
    model_name: str = "m",
    device: int = 0,
    slots: int = 1,
) -> ev.ReadySeen:
    msg = WorkerReady(
        worker_id=worker_id, pool_id=pool, model=model_name, device=device, pid=1,
        memory_bytes=memory, n_ctx=2048, layers_offloaded=30, layers_total=30, load_ms=1.0,
        slots=slots,
    )  # fmt: skip
    return ev.ReadySeen(now, msg)


def status(
    job_id: str,
    worker_id: str,
    state: str,
    seq: int = 0,
    now: float = T0,
    code: object = None,
    hash: str | None = None,
) -> ev.StatusSeen:
    msg = JobStatus(job_id=job_id, worker_id=worker_id, state=state, seq=seq, code=code, hash=hash)  # type: ignore[arg-type]
    return ev.StatusSeen(now, msg)


def failed(
    worker_id: str, now: float = T0, pool: str = "p1", code: ErrorCode = ErrorCode.MODEL_LOAD_FAILED
) -> ev.FailedSeen:
    msg = WorkerFailed(worker_id=worker_id, pool_id=pool, code=code, message="boom")
    return ev.FailedSeen(now, msg)


def refused(
    job_id: str,
    worker_id: str,
    now: float = T0,
    code: ErrorCode = ErrorCode.WORKER_BUSY,
    message: str = "",
) -> ev.ExecuteRefused:
    return ev.ExecuteRefused(now, job_id, worker_id, code, message)


def abandon_answered(job_id: str, worker_id: str, now: float = T0) -> ev.AbandonAnswered:
    return ev.AbandonAnswered(now, job_id, worker_id)


def spawn_refused(
    worker_id: str, now: float = T0, code: ErrorCode = ErrorCode.INSUFFICIENT_VRAM
) -> ev.SpawnRefused:
    return ev.SpawnRefused(now, worker_id, code, "no")


def accepted(job_id: str, worker_id: str, now: float = T0) -> ev.ExecuteAccepted:
    return ev.ExecuteAccepted(now, job_id, worker_id)


def tick(now: float) -> ev.Tick:
    return ev.Tick(now)


def cancel(
    core: Core, now: float, job_id: str, caller: Caller = ANYONE
) -> tuple[CancelReply | Error, list[Output]]:
    """Feed a cancel; its one answer, and the other outputs."""
    out = core.handle(ev.Cancel(now, job_id, caller))
    answers = [o.reply for o in out if isinstance(o, Answered)]
    assert len(answers) == 1, out
    return answers[0], [o for o in out if not isinstance(o, Answered)]


def make_core(**cfg: object) -> Core:
    """A core as configured, but with 4 slots per worker unless `default_model` says (the
    tests' figures are for 4; test_slots.py checks the choice by device)."""
    cfg.setdefault("default_model", ModelConfig(slots=4))
    core = Core(OrchConfig(**cfg))  # type: ignore[arg-type]
    core.handle(heartbeat())
    return core


# ---- picking commands out of a handle() result ---------------------------------------------
def of(kind: type[C], out: Iterable[Output]) -> list[C]:
    return [c for c in out if isinstance(c, kind)]


def spawns(out: Iterable[Output]) -> list[Spawn]:
    return of(Spawn, out)


def executes(out: Iterable[Output]) -> list[SendExecute]:
    return of(SendExecute, out)


def stops(out: Iterable[Output]) -> list[Stop]:
    return of(Stop, out)


def cancels(out: Iterable[Output]) -> list[CancelOnWorker]:
    return of(CancelOnWorker, out)


def abandons(out: Iterable[Output]) -> list[AbandonOnWorker]:
    return of(AbandonOnWorker, out)


def errors(out: Iterable[Output]) -> list[Error]:
    return [c.event for c in of(Emit, out) if isinstance(c.event, Error)]


def error_codes(out: Iterable[Output]) -> dict[str, ErrorCode]:
    return {e.job_id or "": e.code for e in errors(out)}


def queued(out: Iterable[Output]) -> list[Queued]:
    return [c.event for c in of(Emit, out) if isinstance(c.event, Queued)]


def only_spawn(out: Iterable[Output]) -> Spawn:
    found = spawns(out)
    assert len(found) == 1, found
    return found[0]


def only_execute(out: Iterable[Output]) -> SendExecute:
    found = executes(out)
    assert len(found) == 1, found
    return found[0]


def running_worker(core: Core, job_id: str = "j1", now: float = T0, **kw: object) -> str:
    """Submit a job, make its spawned worker ready, and return the worker id (job dispatched)."""
    out = core.handle(submit(job_id, now, **kw))
    worker_id = only_spawn(out).request.worker_id
    out = core.handle(ready(worker_id, now))
    assert only_execute(out).execute.job_id == job_id
    return worker_id


def idle_worker(core: Core, now: float = T0, job_id: str = "warm") -> str:
    """A ready, idle worker of model m (ran one job to its end)."""
    worker_id = running_worker(core, job_id, now)
    core.handle(status(job_id, worker_id, "finished", seq=3, now=now))
    return worker_id
