"""Small builders for core tests: a core, a pool heartbeat, a request (no server)."""

from __future__ import annotations

from llorch_orch.core import Core, OrchConfig
from llorch_orch.core import events as ev
from schemas import Device, GenerateRequest, Heartbeat, JobStatus, ModelInfo, WorkerInfo, WorkerReady

MiB = 1024 * 1024
GiB = 1024 * MiB
T0 = 1_000_000.0


def model(name: str = "m", size: int = 100 * MiB) -> ModelInfo:
    return ModelInfo(
        name=name, sha256="0" * 64, size_bytes=size, n_ctx_train=8192, n_layers=30,
        kv_bytes_per_token=1024,
    )  # fmt: skip


def gpu(index: int, total: int = 8 * GiB, free: int | None = None) -> Device:
    free = total if free is None else free
    return Device(
        index=index, uuid=f"GPU-{index}", name="H100", kind="gpu", total_bytes=total,
        free_bytes=free, used_bytes=total - free,
    )  # fmt: skip


def heartbeat(
    pool: str = "p1",
    now: float = T0,
    devices: list[Device] | None = None,
    workers: list[WorkerInfo] | None = None,
    models: list[ModelInfo] | None = None,
) -> ev.HeartbeatSeen:
    hb = Heartbeat(
        pool_id=pool, ts=now, seq=1, interval_s=2.0, devices=devices or [gpu(0)],
        workers=workers or [], models=models if models is not None else [model()],
    )  # fmt: skip
    return ev.HeartbeatSeen(now, hb)


def request(model_name: str = "m", **kw: object) -> GenerateRequest:
    return GenerateRequest(model=model_name, prompt="hi", max_tokens=8, **kw)  # type: ignore[arg-type]


def submit(job_id: str, now: float = T0, **kw: object) -> ev.Submit:
    return ev.Submit(now, request(job_id=job_id, **kw), f"_INBOX.{job_id}")


def ready(worker_id: str, now: float = T0, pool: str = "p1", memory: int = 300 * MiB, model_name: str = "m", device: int = 0) -> ev.ReadySeen:
    msg = WorkerReady(
        worker_id=worker_id, pool_id=pool, model=model_name, device=device, pid=1,
        memory_bytes=memory, n_ctx=2048, layers_offloaded=30, layers_total=30, load_ms=1.0,
    )  # fmt: skip
    return ev.ReadySeen(now, msg)


def status(job_id: str, worker_id: str, state: str, seq: int = 0, now: float = T0, code: object = None) -> ev.StatusSeen:
    msg = JobStatus(job_id=job_id, worker_id=worker_id, state=state, seq=seq, code=code)  # type: ignore[arg-type]
    return ev.StatusSeen(now, msg)


def make_core(**cfg: object) -> Core:
    core = Core(OrchConfig(**cfg))  # type: ignore[arg-type]
    core.handle(heartbeat())
    return core
