"""The worker process's NATS shell: load, announce, serve execute/cancel, drain on signal."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import signal
import sys
import time
from collections import OrderedDict

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import trace
from opentelemetry.context import Context

from llorch_common import orphan, tracing
from llorch_common.fence import Fence
from llorch_common.lifeline import EXIT_CONNECTION_LOST, Lifeline
from llorch_common.local import servers
from llorch_worker import memory, telemetry
from llorch_worker.cli import WorkerConfig
from llorch_worker.engine import Engine, Loaded, LoadFailed
from llorch_worker.inbound import parse_cancel, parse_execute
from llorch_worker.job import Job, JobContext
from schemas import (
    Ack,
    Error,
    ErrorCode,
    Execute,
    JobStatus,
    ProtocolError,
    Subjects,
    WorkerFailed,
    WorkerLoad,
    WorkerReady,
    encode,
)

log = logging.getLogger("llorch.worker")

EXIT_OK = 0
EXIT_LOAD_FAILED = 3
_NO_RESPONDERS = "503"
# After our own reconnect, clients reconnect too (nats-py waits 2 s between attempts, plus
# jitter): their inbox is without a subscriber meanwhile, which does not mean they left.
RECONNECT_GRACE_S = 5.0
# The load is sent again this often, changed or not: core NATS delivers at most once, and a
# WorkerLoad lost with a server (ours or the pool's) would leave a slot busy at the pool, and
# so a job waiting at the orchestrator, for good.
LOAD_REFRESH_S = 5.0
ENDED_KEPT = 64  # ended jobs an abandon may still ask about (it answers with their final status)


def _abandon_when_parent_dies() -> None:
    """SIGHUP (= abandon) when the pool that spawned us dies (also when it died before this
    call: it named itself in our environment), so no worker outlives its pool and none keeps
    streaming a job the orchestrator will retry elsewhere."""
    orphan.signal_when_parent_dies(signal.SIGHUP, orphan.parent_from_env())


async def _refuse(req: Request, span: trace.Span, error: Error) -> None:
    """Answer an execute with `error`, in its span (ended here: the job never runs)."""
    span.set_status(trace.StatusCode.ERROR, error.code)
    span.end()
    await req.respond(encode(error), headers=tracing.inject(None, trace.set_span_in_context(span)))


class Worker:
    def __init__(self, cfg: WorkerConfig) -> None:
        self.cfg = cfg
        self.subjects = Subjects(cfg.prefix)
        self.engine = Engine(cfg.model_path, cfg.n_ctx, cfg.gpu, cfg.threads, cfg.slots)
        self._jobs: dict[str, Job] = {}  # running, by job id: one slot each
        # running and recently ended jobs: an abandon asks them for their final status
        self._known: OrderedDict[str, Job] = OrderedDict()
        self._preparing = 0  # executes being checked (tokenized) before their answer: a slot each
        self._job_tasks: set[asyncio.Task[None]] = set()  # referenced so they are not collected
        self._load_sent = 0  # slots_busy of the last WorkerLoad published
        self._draining = False
        self._stopped = asyncio.Event()
        self._gpu_before = 0  # device memory in use before our load (GPU workers)
        self._load_context = Context()  # the load span's, once loading began
        self._probes_trusted_from = 0.0  # monotonic; later while NATS is away or just back
        self.fence = Fence()  # commands of an orchestrator whose lead has passed are refused

    async def run(self) -> int:
        """Exit status of the process: 0 after a drain, 3 when the model could not be loaded,
        EXIT_CONNECTION_LOST when NATS closed the connection for good."""
        self._install_signals()  # before anyone can know our pid is worth signalling
        _abandon_when_parent_dies()
        # reconnects forever: a NATS restart is ridden out, the job stream resumes after it
        lifeline = Lifeline(f"worker {self.cfg.worker_id}", log)
        nc = await nats.connect(
            servers(self.cfg.nats_url),
            name=f"llorch-worker-{self.cfg.worker_id}",
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            **lifeline.options(),
            **self.cfg.credentials.connect_options(),
        )
        lifeline.watch(nc)
        try:
            loaded = await self._load(nc)
            if loaded is None:
                return EXIT_LOAD_FAILED
            if self._draining:  # told to stop while loading: never announce
                return EXIT_OK
            if lifeline.lost.is_set():  # lost while loading: nothing can be served
                return EXIT_CONNECTION_LOST
            service = await self._serve(nc)
            await self._announce(nc, loaded)
            refreshing = asyncio.ensure_future(self._refresh_load())
            try:
                if await lifeline.until(self._stopped):
                    return EXIT_CONNECTION_LOST
            finally:
                refreshing.cancel()
            await service.stop()
            return EXIT_OK
        finally:
            lifeline.leaving()
            if not nc.is_closed:  # lost: nothing left to flush
                await nc.drain()
            self.engine.close()

    async def _load(self, nc: Client) -> Loaded | None:
        cfg = self.cfg
        span = telemetry.load_span(cfg.worker_id, cfg.model, cfg.device)
        self._load_context = trace.set_span_in_context(span)  # `ready` carries it
        with trace.use_span(span, end_on_exit=True):
            loaded = await self._load_model(nc)
            if loaded is not None:
                telemetry.load.record(loaded.load_ms / 1000, {"model": cfg.model})
                span.set_attribute("llorch.load_ms", loaded.load_ms)
            return loaded

    async def _load_model(self, nc: Client) -> Loaded | None:
        cfg = self.cfg
        try:
            # What the device held before we came, for when NVML cannot see our pid.
            self._gpu_before = memory.gpu_used_bytes(cfg.device) if cfg.gpu else 0
            return await self.engine.load()
        except LoadFailed as exc:
            failed = WorkerFailed(
                worker_id=cfg.worker_id, pool_id=cfg.pool_id, code=exc.code, message=exc.message
            )
        except Exception as exc:  # NVML errors and the like: still report, never die silently
            failed = WorkerFailed(
                worker_id=cfg.worker_id,
                pool_id=cfg.pool_id,
                code=ErrorCode.MODEL_LOAD_FAILED,
                message=repr(exc),
            )
        print(f"llorch-worker {cfg.worker_id}: {failed.code}: {failed.message}", file=sys.stderr)
        trace.get_current_span().set_status(trace.StatusCode.ERROR, failed.code)
        await nc.publish(
            self.subjects.ready(cfg.worker_id), encode(failed), headers=tracing.inject()
        )
        await nc.flush()
        return None

    async def _serve(self, nc: Client) -> Service:
        cfg = self.cfg
        probe_prefix = nc.new_inbox()
        await nc.subscribe(f"{probe_prefix}.*", cb=self._on_probe_reply)
        await nc.subscribe(self.subjects.leader, cb=self._on_leader)
        self._ctx = JobContext(
            nc=nc,
            engine=self.engine,
            subjects=self.subjects,
            worker_id=cfg.worker_id,
            progress_interval=cfg.progress_interval,
            probe_prefix=probe_prefix,
        )
        service = await add_service(
            nc,
            name="llorch-worker",
            version="0.1.0",
            description=f"llorch worker {cfg.worker_id} ({cfg.model})",
            metadata={"worker_id": cfg.worker_id, "model": cfg.model, "pool": cfg.pool_id},
        )
        execute = self.subjects.execute(cfg.worker_id)
        cancel = self.subjects.worker_cancel(cfg.worker_id)
        await service.add_endpoint(name="execute", subject=execute, handler=self._on_execute)
        await service.add_endpoint(name="cancel", subject=cancel, handler=self._on_cancel)
        await nc.flush()  # subscribed on the server before anyone hears we are ready
        return service

    async def _announce(self, nc: Client, loaded: Loaded) -> None:
        cfg = self.cfg
        pid = os.getpid()
        used = (
            memory.gpu_process_bytes(cfg.device, pid, self._gpu_before)
            if cfg.gpu
            else memory.rss_bytes()
        )
        ready = WorkerReady(
            worker_id=cfg.worker_id,
            pool_id=cfg.pool_id,
            model=cfg.model,
            device=cfg.device,
            pid=pid,
            memory_bytes=used,
            n_ctx=cfg.n_ctx,
            layers_offloaded=loaded.layers_offloaded,
            layers_total=loaded.layers_total,
            load_ms=loaded.load_ms,
            slots=cfg.slots,
        )
        headers = tracing.inject(None, self._load_context)
        await nc.publish(self.subjects.ready(cfg.worker_id), encode(ready), headers=headers)
        await nc.flush()

    def _install_signals(self) -> None:
        """SIGTERM drains (a stop asked by the orchestrator); SIGINT is the pool stopping: the
        running job cannot wait for its end; SIGHUP is the pool's death: the orchestrator will
        retry the running job elsewhere, so this worker must stop streaming it at once."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._drain)
        loop.add_signal_handler(signal.SIGINT, self._stop_now)
        loop.add_signal_handler(signal.SIGHUP, self._abandon_now)

    def _drain(self) -> None:
        """Refuse new jobs, let the running ones finish, then stop."""
        self._draining = True
        if not self._jobs and not self._preparing:
            self._stopped.set()

    def _stop_now(self) -> None:
        """Refuse new jobs and end the running ones at their next token, with a retriable
        WORKER_LOST (the worker goes away mid-job; the client may submit it again), then stop.
        Their clients and the orchestrator hear that end like any other."""
        reason = "worker stopped mid-job: its pool is shutting down"
        for job in self._jobs.values():
            job.cancel(reason, ErrorCode.WORKER_LOST, retriable=True)
        self._drain()

    def _abandon_now(self) -> None:
        """Refuse new jobs, abandon the running ones (each stops at its next token and
        publishes nothing more on its stream; its `abandoned` status tells the orchestrator
        where it stopped), then stop."""
        for job in self._jobs.values():
            job.abandon(ErrorCode.POOL_LOST)
        self._drain()

    async def _on_execute(self, req: Request) -> None:
        try:
            execute = parse_execute(req.data, self.cfg.model)
        except ProtocolError as exc:
            await req.respond(encode(Error(code=exc.code, message=exc.message)))
            return
        cfg = self.cfg
        span = telemetry.execute_span(
            req.subject,
            req.headers,
            **{
                tracing.JOB_ID: execute.job_id,
                tracing.MODEL: cfg.model,
                tracing.WORKER_ID: cfg.worker_id,
                tracing.POOL_ID: cfg.pool_id,
                tracing.DEVICE: cfg.device,
                tracing.CONVERSATION_ID: execute.job_id,
            },
        )
        if (stale := self.fence.admit(req.headers)) is not None:
            await _refuse(req, span, stale)
            return
        busy = self._busy(execute.job_id)
        if busy:
            await _refuse(
                req, span, Error(code=ErrorCode.WORKER_BUSY, message=busy, retriable=True)
            )
            return
        prompt = await self._prepare(req, execute, span)
        if prompt is None:
            return
        job = Job(self._ctx, execute, prompt, span)
        self._jobs[job.job_id] = job
        self._remember(job)
        await req.respond(encode(Ack()), headers=job.headers)
        task = asyncio.create_task(self._run_job(job))
        self._job_tasks.add(task)
        task.add_done_callback(self._job_tasks.discard)
        await self._publish_load()

    def _busy(self, job_id: str) -> str:
        """Why an execute must wait ("" when a slot is free for it)."""
        if self._draining:
            return "draining"
        if job_id in self._jobs:
            return f"job {job_id} already runs here"
        if len(self._jobs) + self._preparing >= self.cfg.slots:
            return f"all {self.cfg.slots} slots busy"
        return ""

    def _remember(self, job: Job) -> None:
        self._known[job.job_id] = job
        self._known.move_to_end(job.job_id)
        while len(self._known) > ENDED_KEPT + self.cfg.slots:
            self._known.popitem(last=False)

    async def _prepare(self, req: Request, execute: Execute, span: trace.Span) -> list[int] | None:
        """The job's prompt tokens; None once the execute was refused for the job's own fault
        (the orchestrator then fails the job and keeps this worker)."""
        self._preparing += 1
        try:
            return await self.engine.prepare(execute)
        except ProtocolError as exc:
            refusal = Error(code=exc.code, message=exc.message)
        finally:
            self._preparing -= 1
        if self._draining:  # a signal came meanwhile and waited for this answer
            self._drain()
        await _refuse(req, span, refusal)
        return None

    async def _run_job(self, job: Job) -> None:
        try:
            await job.run()
        except Exception as exc:  # e.g. the connection failed mid-stream: keep serving
            job.cancel(f"worker error: {exc!r}")  # free the engine for the next job
            log.warning("job %s failed: %r", job.job_id, exc, extra={"job_id": job.job_id})
        finally:
            del self._jobs[job.job_id]
        await self._publish_load()
        if self._draining:
            self._drain()

    async def _refresh_load(self) -> None:
        while True:
            await asyncio.sleep(LOAD_REFRESH_S)
            await self._publish_load(again=True)

    async def _publish_load(self, again: bool = False) -> None:
        """WorkerLoad on our ready subject when the number of busy slots changed since the last
        one, or `again` (its pool reports it in heartbeats)."""
        busy = len(self._jobs)
        if busy == self._load_sent and not again:
            return
        self._load_sent = busy
        cfg = self.cfg
        load = WorkerLoad(worker_id=cfg.worker_id, pool_id=cfg.pool_id, slots_busy=busy)
        try:
            await self._ctx.nc.publish(self.subjects.ready(cfg.worker_id), encode(load))
        except Exception as exc:  # the connection is gone: the heartbeat's view is lost anyway
            log.warning("cannot publish the load: %r", exc)

    async def _on_cancel(self, req: Request) -> None:
        span = tracing.serving(
            telemetry.tracer, req.subject, req.headers, worker=self.cfg.worker_id
        )
        with trace.use_span(span, end_on_exit=True):
            stale = self.fence.admit(req.headers)
            reply = stale or await self._cancel(req.data)
            await req.respond(encode(reply), headers=tracing.inject())

    async def _cancel(self, data: bytes) -> Ack | Error | JobStatus:
        try:
            cancel = parse_cancel(data)
        except ProtocolError as exc:
            return Error(code=exc.code, message=exc.message)
        if cancel.abandon:
            return await self._abandon(cancel.job_id)
        job = self._jobs.get(cancel.job_id)
        if job is None or job.ended:
            return Ack(detail="not running")
        job.cancel("cancelled by request")
        return Ack(detail="cancelling")

    async def _abandon(self, job_id: str) -> Ack | JobStatus:
        """The orchestrator lost our pool and retries the job elsewhere: stop streaming it, and
        answer once it has stopped with its final status (abandoned where it stopped, or how it
        ended if it ended first). "not running": it never ran here."""
        job = self._known.get(job_id)
        if job is None:
            return Ack(detail="not running")
        job.abandon(ErrorCode.WORKER_LOST)
        await job.done.wait()
        return job.final or Ack(detail="not running")

    async def _on_disconnected(self) -> None:
        self._probes_trusted_from = math.inf  # what we buffered goes out on reconnect

    async def _on_reconnected(self) -> None:
        self._probes_trusted_from = time.monotonic() + RECONNECT_GRACE_S

    async def _on_leader(self, msg: Msg) -> None:
        self.fence.heard(msg.data)

    async def _on_probe_reply(self, msg: Msg) -> None:
        """A no-responders status for a probe means the client's inbox has no subscriber;
        except just after a reconnect (a NATS restart), when the client may not be back yet."""
        if not msg.headers or msg.headers.get("Status") != _NO_RESPONDERS:
            return
        if time.monotonic() < self._probes_trusted_from:
            return  # the next probe, after the grace, tells
        job = self._jobs.get(msg.subject.removeprefix(f"{self._ctx.probe_prefix}."))
        if job is not None:
            job.cancel("client gone: its stream subject has no subscriber")
