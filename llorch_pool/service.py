"""The pool manager's NATS shell: heartbeats, spawn/stop endpoints, worker reaping.

All judgement lives in the pure modules (registry, spawn_checks, catalog); this layer decodes,
calls them, starts/signals processes and publishes what happened.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import nats.micro
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import trace

from llorch_common import tracing
from llorch_common.aio import wait_event
from llorch_common.connect import Credentials
from llorch_common.fence import Fence, epoch_of
from llorch_pool import catalog, registry, spawn_checks, supervisor, telemetry
from llorch_pool.inventory import Inventory
from llorch_pool.registry import WorkerRecord
from schemas import (
    Ack,
    Device,
    Error,
    ErrorCode,
    Heartbeat,
    ModelInfo,
    ProtocolError,
    SpawnRequest,
    StopRequest,
    Subjects,
    WorkerFailed,
    WorkerLoad,
    WorkerReady,
    check_id,
    decoder,
    encode,
)

log = logging.getLogger("llorch_pool")
audit = logging.getLogger("llorch.audit")  # security decisions: refused models

SERVICE_NAME = "llorch-pool"
SERVICE_VERSION = "0.1.0"
SHUTDOWN_GRACE_S = 10.0  # for workers to stop at pool shutdown (one token away), then SIGKILL
# How the pool tells a worker to stop: SIGTERM drains (the running job finishes first), SIGINT
# stops now (the running job ends with a retriable error), SIGKILL kills.
_DRAIN, _STOP_NOW, _KILL = signal.SIGTERM, signal.SIGINT, signal.SIGKILL

_decode_spawn = decoder(SpawnRequest)
_decode_stop = decoder(StopRequest)
_decode_ready = decoder(WorkerReady | WorkerFailed | WorkerLoad)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    nats_url: str
    pool_id: str
    data_dir: Path
    prefix: str
    heartbeat_interval: float
    worker_threads: int | None = None
    worker_credentials: Credentials = field(default_factory=Credentials)  # handed to workers
    model_dirs: tuple[Path, ...] = ()  # model files must lie under one of these (resolved)


class PoolService:
    def __init__(self, config: PoolConfig, nc: Client, inventory: Inventory) -> None:
        self.config = config
        self.nc = nc
        self.inventory = inventory
        self.subjects = Subjects(config.prefix)
        self.settings = supervisor.PoolSettings(
            nats_url=config.nats_url,
            pool_id=config.pool_id,
            prefix=config.prefix,
            log_dir=config.data_dir / "logs",
            threads=config.worker_threads,
            credentials_env=config.worker_credentials.to_env(),
        )
        self.workers: dict[str, WorkerRecord] = {}
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._ready_subs: dict[str, Subscription] = {}
        self._reapers: dict[str, asyncio.Task[None]] = {}
        self._changed = asyncio.Event()
        self._seq = 0
        self._service: Service | None = None
        self._snapshot_sub: Subscription | None = None
        self._leader_sub: Subscription | None = None
        self.fence = Fence()  # commands of an orchestrator whose lead has passed are refused
        self._spawned_at: dict[str, float] = {}  # monotonic spawn time of workers not yet ready
        self.last_beat: telemetry.Snapshot | None = None  # what the gauges report
        telemetry.observe(lambda: self.last_beat)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self._snapshot_sub = await self.nc.subscribe(
            self.subjects.snapshot_request, cb=self._on_snapshot_request
        )
        self._leader_sub = await self.nc.subscribe(self.subjects.leader, cb=self._on_leader)
        self._service = await nats.micro.add_service(
            self.nc,
            name=SERVICE_NAME,
            version=SERVICE_VERSION,
            description="llorch pool manager: inventory, worker spawn/stop, heartbeats",
            metadata={"pool_id": self.config.pool_id, "device_kind": self.inventory.kind},
        )
        pool = self.config.pool_id
        await self._service.add_endpoint(
            name="spawn", subject=self.subjects.spawn(pool), handler=self._handle_spawn
        )
        await self._service.add_endpoint(
            name="stop", subject=self.subjects.stop(pool), handler=self._handle_stop
        )
        self._mark_changed()  # first heartbeat at once

    async def run_heartbeats(self) -> None:
        """Every interval, and at once after any change (changes in a burst coalesce)."""
        while True:
            await wait_event(self._changed, self.config.heartbeat_interval)
            self._changed.clear()
            try:
                await self.publish_heartbeat()
            except Exception:  # e.g. NVML lost a GPU: report the bug, keep beating
                log.exception("heartbeat failed")

    async def shutdown(self) -> None:
        """Stop serving, stop every worker now (a running job would hold the pool for as long
        as it runs; its client gets a retriable error instead), SIGKILL those still there
        after the grace period, report, leave."""
        if self._service is not None:
            await self._service.stop()
        for sub in (self._snapshot_sub, self._leader_sub):
            if sub is not None:
                await sub.unsubscribe()
        for worker_id in list(self._procs):
            self._signal(worker_id, _STOP_NOW)
        reapers = list(self._reapers.values())
        if reapers:
            _, late = await asyncio.wait(reapers, timeout=SHUTDOWN_GRACE_S)
            for worker_id in list(self._procs):
                log.warning("worker %s did not stop in %.0fs: killing", worker_id, SHUTDOWN_GRACE_S)
                self._signal(worker_id, _KILL)
            if late:
                await asyncio.wait(late)
        await self.publish_heartbeat()

    # --- heartbeat -------------------------------------------------------------------------

    def _mark_changed(self) -> None:
        self._changed.set()

    async def _on_snapshot_request(self, msg: Msg) -> None:
        """Beat now, whoever asks: a heartbeat changes nothing (`llorch models add` asks too,
        with no epoch). A leader's ask moves the fence."""
        self.fence.saw(epoch_of(msg.headers))
        self._mark_changed()

    async def _on_leader(self, msg: Msg) -> None:
        self.fence.heard(msg.data)

    def devices(self) -> list[Device]:
        return self.inventory.snapshot(
            pending=registry.bytes_by_device(self.workers, loading_only=True),
            reserved=registry.bytes_by_device(self.workers, loading_only=False),
        )

    def _models(self) -> list[ModelInfo]:
        try:
            return catalog.present_models(self.config.data_dir)
        except ProtocolError as exc:
            log.error("catalog unreadable: %s", exc.message)
            return []

    async def publish_heartbeat(self) -> None:
        loaded = [r.pid for r in self.workers.values() if r.pid and r.memory_bytes is not None]
        if loaded:
            self.workers = registry.with_measured(
                self.workers, self.inventory.worker_memory(loaded)
            )
        devices, models = self.devices(), self._models()
        self._seq += 1
        beat = Heartbeat(
            pool_id=self.config.pool_id,
            ts=time.time(),
            seq=self._seq,
            interval_s=self.config.heartbeat_interval,
            devices=devices,
            workers=[registry.to_wire(r) for r in self.workers.values()],
            models=models,
        )
        await self.nc.publish(self.subjects.heartbeat(self.config.pool_id), encode(beat))
        self.last_beat = (beat, registry.bytes_by_device(self.workers, loading_only=False))
        self.workers = registry.after_heartbeat(self.workers)

    # --- request endpoints -----------------------------------------------------------------

    async def _respond(self, request: Request, handle: Callable[[bytes], Awaitable[Ack]]) -> None:
        span = tracing.serving(
            telemetry.tracer, request.subject, request.headers, pool=self.config.pool_id
        )
        with trace.use_span(span, end_on_exit=True):  # the reply carries the span's context
            await self._respond_in_span(request, handle)

    async def _respond_in_span(
        self, request: Request, handle: Callable[[bytes], Awaitable[Ack]]
    ) -> None:
        """Every request gets exactly one reply: an Ack, or an Error with a stable code (also
        in the micro-service error headers, for stock NATS tooling)."""
        try:
            if (stale := self.fence.admit(request.headers)) is not None:
                raise ProtocolError(stale.code, stale.message)
            reply = await handle(request.data)
        except ProtocolError as exc:
            error = Error(code=exc.code, message=exc.message)
        except Exception as exc:  # a bug: report it, keep serving
            log.exception("request on %s failed", request.subject)
            error = Error(code=ErrorCode.INTERNAL, message=repr(exc))
        else:
            await request.respond(encode(reply), headers=tracing.inject())
            return
        trace.get_current_span().set_status(trace.StatusCode.ERROR, error.code)
        headers = tracing.inject()
        await request.respond_error(str(error.code), error.message, encode(error), headers)

    async def _handle_spawn(self, request: Request) -> None:
        await self._respond(request, self._spawn)

    async def _handle_stop(self, request: Request) -> None:
        await self._respond(request, self._stop)

    async def _spawn(self, data: bytes) -> Ack:
        req: SpawnRequest = _decode_spawn(data)
        models = catalog.load(self.config.data_dir)
        device = spawn_checks.check_request(req, self.workers, self.devices(), models)
        try:
            real = Path(models[req.model].path).resolve()  # symlinks cannot lead outside
            spawn_checks.check_model_dir(req.model, real, self.config.model_dirs)
            model = await asyncio.to_thread(catalog.resolve, self.config.data_dir, req.model)
        except ProtocolError as exc:
            if exc.code == ErrorCode.UNTRUSTED_MODEL:
                audit.warning(
                    "refused model %r for worker %s: %s", req.model, req.worker_id, exc.message
                )
            raise
        spawn_checks.check_fits(device, model, req.n_ctx, req.slots)
        launch = supervisor.Launch(
            worker_id=req.worker_id,
            model=req.model,
            model_path=model.path,
            n_ctx=req.n_ctx,
            device=device.index,
            device_kind=device.kind,
            slots=req.slots,
            # the worker's load span joins the trace of the spawn (and of the job behind it)
            trace_env={k.upper(): v for k, v in (tracing.inject() or {}).items()},
        )
        return await self._launch(launch, spawn_checks.need_bytes(model, req.n_ctx, req.slots))

    async def _launch(self, launch: supervisor.Launch, estimate_bytes: int) -> Ack:
        worker_id = launch.worker_id
        # Listen before the process exists, and record it first, so no ready message is missed.
        sub = await self.nc.subscribe(
            self.subjects.ready(worker_id), cb=partial(self._on_ready, worker_id)
        )
        self.workers[worker_id] = registry.starting(
            worker_id, launch.model, launch.device, estimate_bytes
        )
        try:
            proc = await supervisor.start_worker(self.settings, launch)
        except OSError as exc:
            del self.workers[worker_id]
            await sub.unsubscribe()
            raise ProtocolError(
                ErrorCode.WORKER_START_FAILED, f"cannot start worker: {exc}"
            ) from None
        self.workers[worker_id] = registry.with_pid(self.workers[worker_id], proc.pid)
        self._procs[worker_id] = proc
        self._ready_subs[worker_id] = sub
        self._reapers[worker_id] = asyncio.create_task(self._reap(worker_id, proc))
        self._spawned_at[worker_id] = time.monotonic()
        log.info("spawned worker %s (pid %d) for %s", worker_id, proc.pid, launch.model)
        self._mark_changed()
        return Ack(detail=str(proc.pid))

    async def _stop(self, data: bytes) -> Ack:
        req: StopRequest = _decode_stop(data)
        check_id(req.worker_id, "worker id")
        if req.worker_id not in self._procs:
            raise ProtocolError(ErrorCode.NOT_FOUND, f"no running worker {req.worker_id}")
        self._signal(req.worker_id, _DRAIN if req.drain else _KILL)
        return Ack(detail="draining" if req.drain else "killed")

    def _signal(self, worker_id: str, sig: signal.Signals) -> None:
        proc = self._procs[worker_id]
        with contextlib.suppress(ProcessLookupError):  # exited already: the reaper reports it
            proc.send_signal(sig)
        if sig != _KILL:
            self.workers[worker_id] = registry.on_draining(self.workers[worker_id])
            self._mark_changed()

    # --- worker events ---------------------------------------------------------------------

    async def _on_ready(self, worker_id: str, msg: Msg) -> None:
        try:
            event: Any = _decode_ready(msg.data)
        except ProtocolError as exc:
            log.warning("bad message on %s: %s", msg.subject, exc.message)
            return
        record = self.workers.get(worker_id)
        if record is None or event.worker_id != worker_id:
            return
        if isinstance(event, WorkerLoad):  # reported with the next heartbeat, not at once
            self.workers[worker_id] = registry.on_load(record, event.slots_busy)
            return
        if isinstance(event, WorkerReady):
            updated = registry.on_ready(record, event.memory_bytes, event.slots)
        else:
            updated = registry.on_failed(record, f"{event.code}: {event.message}")
        if updated != record:
            self.workers[worker_id] = updated
            self._spawn_done(worker_id, updated.state)
            if updated.state == "failed":  # a ready worker's subject carries its WorkerLoad
                await self._drop_ready_sub(worker_id)
            self._mark_changed()

    async def _drop_ready_sub(self, worker_id: str) -> None:
        sub = self._ready_subs.pop(worker_id, None)
        if sub is not None:
            await sub.unsubscribe()

    def _spawn_done(self, worker_id: str, outcome: str) -> None:
        started = self._spawned_at.pop(worker_id, None)
        if started is not None:
            labels = {"model": self.workers[worker_id].model, "outcome": outcome}
            telemetry.spawn_duration.record(time.monotonic() - started, labels)

    async def _reap(self, worker_id: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        self._spawn_done(worker_id, "exited")  # died before it was ready
        del self._procs[worker_id]
        del self._reapers[worker_id]
        self.workers[worker_id] = registry.on_exit(self.workers[worker_id], code)
        log.info("worker %s %s", worker_id, registry.exit_message(code))
        self._mark_changed()
        await self._drop_ready_sub(worker_id)
