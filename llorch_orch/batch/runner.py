"""The batch runner inside the orchestrator process: pulls jobs from `LLORCH_BATCH` when the
core has room, submits them at batch priority through `OrchestratorService.submit`, collects
their events from its own inbox, stores one result each in `LLORCH_RESULTS`, then acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext

from schemas import (
    BatchCancelReply,
    BatchCancelRequest,
    BatchEvent,
    BatchJob,
    BatchResult,
    BatchStatus,
    BatchStatusRequest,
    Error,
    ErrorCode,
    Event,
    ProtocolError,
    decoder,
    encode,
    is_valid_id,
    new_id,
)
from schemas.aio import wait_event

from ..service import OrchestratorService
from . import store
from .collect import Collector, failed, has_room, retry_delay, to_request
from .config import BATCH_STREAM, CONSUMER, BatchConfig, consumer

log = logging.getLogger("llorch.batch")

FETCH_WAIT_S = 5.0  # long-poll of one pull request
RETRY_S = 1.0  # pause after a JetStream call failed (server away: nats-py reconnects)
TICK_S = 1.0  # keepalive / loss check period (each message is kept alive every keepalive_s)
CUSTOM_ID = "Llorch-Custom-Id"  # header naming the job of an undecodable message
REJECTED = "Llorch-Error"  # header of a line the producer rejected: stored as failed as is

_event = decoder(Event)
_job = decoder(BatchJob)
_status_req = decoder(BatchStatusRequest)
_cancel_req = decoder(BatchCancelRequest)


@dataclass(slots=True)
class Flight:
    """A pulled job message, until its result is stored and it is acked (or nak'ed)."""

    msg: Msg
    batch_id: str
    custom_id: str
    job_id: str
    delivered: int  # this delivery's number (1 = first)
    collector: Collector
    kept_alive: float  # when in_progress() last went out
    gone_since: float | None = None  # the core no longer tracks it and no terminal event came
    settling: bool = False


@dataclass
class BatchRunner:
    service: OrchestratorService
    cfg: BatchConfig
    flights: dict[str, Flight] = field(default_factory=dict)  # by job id
    _cancelled: set[str] = field(default_factory=set)
    _live: set[str] = field(default_factory=set)  # batches known not to be cancelled
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _pull: JetStreamContext.PullSubscription | None = None  # once started

    def __post_init__(self) -> None:
        self.nc = self.service.nc
        self.js = self.nc.jetstream()
        self.subjects = self.service.subjects
        self._inbox = f"{self.nc.new_inbox()}.batch"

    async def start(self) -> None:
        await store.ensure_streams(self.js, self.cfg, self.subjects)
        await self.js.add_consumer(BATCH_STREAM, consumer(self.cfg, self.subjects))
        self._pull = await self.js.pull_subscribe_bind(CONSUMER, BATCH_STREAM)
        await self.nc.subscribe(f"{self._inbox}.*", cb=self._on_event)
        await self.nc.subscribe(self.subjects.batch_status, queue="orch", cb=self._on_status)
        # every orchestrator hears a cancel: each stops the jobs it runs
        await self.nc.subscribe(self.subjects.batch_cancel, cb=self._on_cancel)
        self._background(self._pull_loop())
        self._background(self._tick_loop())

    async def stop(self) -> None:
        """Hand unfinished jobs back at once (nak) so a successor need not wait for ack_wait.

        The pull subscription goes first: nats-py's fetch takes messages off its queue without
        marking them done, so a connection drain would wait on it until its drain timeout."""
        if self._pull is not None:
            with contextlib.suppress(Exception):  # a connection already gone has no interest
                await self._pull.unsubscribe()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for flight in self.flights.values():
            with contextlib.suppress(Exception):
                await flight.msg.nak()

    def _background(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # ---- pulling -------------------------------------------------------------------------
    async def _pull_loop(self) -> None:
        while True:
            await self._wait_for_room()
            try:
                assert self._pull is not None  # the loop starts after the subscription
                msgs = await self._pull.fetch(1, timeout=FETCH_WAIT_S)
            except NatsTimeout:
                continue
            except Exception as exc:  # server restarting, connection lost: nats-py reconnects
                log.warning("batch pull failed: %r", exc)
                await asyncio.sleep(RETRY_S)
                continue
            for msg in msgs:
                try:
                    await self._take(msg)
                except Exception:  # unacked: JetStream redelivers it after ack_wait
                    log.exception("batch job %s not taken", msg.subject)

    async def _wait_for_room(self) -> None:
        core = self.service.core
        while True:
            pools = sum(p.alive for p in core.view.pools.values())
            if has_room(core.queue.count("batch"), len(self.flights), pools, self.cfg):
                return
            self._changed.clear()
            await wait_event(self._changed, TICK_S)  # core changes we hear of wake us earlier

    async def _take(self, msg: Msg) -> None:
        batch = msg.subject.rsplit(".", 1)[1]
        delivered = msg.metadata.num_delivered
        job, custom_id, error = _decode(msg)
        if await store.has_result(self.js, self.subjects, batch, custom_id):
            await msg.ack_sync()  # ran before (a resubmission after the dedup window)
            await self._notice(batch, custom_id, "duplicate")
            return
        if error is None and delivered >= self.cfg.max_deliver:
            error = Error(code=ErrorCode.INTERNAL, message=f"delivered {delivered} times")
        if error is None and await self._is_cancelled(batch):
            error = Error(code=ErrorCode.CANCELLED, message=f"batch {batch} cancelled")
        running = self._running(batch, custom_id)
        if error is None and running is not None:  # redelivered while it still runs here
            running.msg, running.delivered = msg, delivered  # (keepalives were lost): adopt
            return
        if error is not None or job is None:
            error = error or Error(code=ErrorCode.INTERNAL, message="no job")
            result = failed(batch, custom_id, delivered, time.time(), error)
            await self._store_and_ack(msg, result)
            return
        job_id = new_id("bj")
        now = time.time()
        collector = Collector(now, has_stop=bool(job.stop), chat=job.messages is not None)
        flight = Flight(msg, batch, custom_id, job_id, delivered, collector, kept_alive=now)
        self.flights[job_id] = flight
        log.info("batch %s job %s -> %s (delivery %d)", batch, custom_id, job_id, delivered)
        # the job's trace continues the producer's (its context rides in the message headers)
        await self.service.submit(
            to_request(job, job_id),
            f"{self._inbox}.{job_id}",
            msg.headers,
            msg.subject,
            batch=batch,
        )

    def _running(self, batch: str, custom_id: str) -> Flight | None:
        for flight in self.flights.values():
            if (flight.batch_id, flight.custom_id) == (batch, custom_id) and not flight.settling:
                return flight
        return None

    async def _is_cancelled(self, batch: str) -> bool:
        if batch in self._cancelled:
            return True
        if batch not in self._live:
            if await store.is_cancelled(self.js, self.subjects, batch):
                self._cancelled.add(batch)
                return True
            self._live.add(batch)
        return False

    # ---- a job's events ------------------------------------------------------------------
    async def _on_event(self, msg: Msg) -> None:
        flight = self.flights.get(msg.subject.rsplit(".", 1)[1])
        if flight is None:
            return  # a late event of a job already settled
        try:
            event = _event(msg.data)
        except ProtocolError as exc:
            log.warning("bad event for %s: %s", flight.job_id, exc)
            return
        self._changed.set()  # a start or an end: the core's queue moved
        if flight.collector.add(event, time.time()) and not flight.settling:
            flight.settling = True
            self._background(self._settle(flight))

    async def _settle(self, flight: Flight) -> None:
        terminal = flight.collector.terminal
        delay = retry_delay(terminal, flight.delivered, self.cfg)
        if flight.batch_id in self._cancelled:
            delay = None
        if delay is not None:
            code = terminal.code if isinstance(terminal, Error) else "lost"
            log.info("batch job %s failed (%s): retry in %.1fs", flight.custom_id, code, delay)
            with contextlib.suppress(Exception):  # unacked anyway: redelivered after ack_wait
                await flight.msg.nak(delay=delay)
            self._forget(flight)
            await self._notice(flight.batch_id, flight.custom_id, "retry")
            return
        now = time.time()
        result = flight.collector.result(flight.batch_id, flight.custom_id, flight.delivered, now)
        await self._store_and_ack(flight.msg, result)
        self._forget(flight)

    def _forget(self, flight: Flight) -> None:
        self.flights.pop(flight.job_id, None)
        self._changed.set()

    async def _store_and_ack(self, msg: Msg, result: BatchResult) -> None:
        """Ack only once the result is durable; while the server is away keep trying (the
        tick loop keeps the message alive meanwhile). A crash between the two is harmless:
        the redelivered job finds its result and is acked unrun."""
        while True:
            try:
                await store.store(self.js, self.subjects, result, msg.headers)
                await msg.ack_sync()
                break
            except Exception as exc:
                log.warning("storing %s/%s: %r", result.batch_id, result.custom_id, exc)
                await asyncio.sleep(RETRY_S)
        await self._notice(result.batch_id, result.custom_id, result.outcome)

    async def _notice(self, batch: str, custom_id: str, outcome: str) -> None:
        event = BatchEvent(batch_id=batch, custom_id=custom_id, outcome=outcome)  # type: ignore[arg-type]
        with contextlib.suppress(Exception):  # a notice only: results are the record
            await self.nc.publish(self.subjects.batch_event(batch), encode(event))

    # ---- keepalive and loss ----------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = time.time()
            for flight in list(self.flights.values()):
                if now - flight.kept_alive >= self.cfg.keepalive_s:
                    flight.kept_alive = now
                    with contextlib.suppress(Exception):  # server away: it redelivers later
                        await flight.msg.in_progress()
                self._check_lost(flight, now)

    def _check_lost(self, flight: Flight, now: float) -> None:
        """A job the core no longer tracks whose terminal event never reached us (lost while
        the server was away) is retried once the events in flight had time to land."""
        if flight.settling or flight.job_id in self.service.core.jobs:
            flight.gone_since = None
            return
        if flight.gone_since is None:
            flight.gone_since = now
        elif now - flight.gone_since >= self.cfg.lost_grace_s:
            message = "job ended without a terminal event reaching the batch runner"
            lost = Error(code=ErrorCode.WORKER_LOST, message=message, retriable=True)
            flight.collector.add(lost, now)
            flight.settling = True
            self._background(self._settle(flight))

    # ---- request/reply API ---------------------------------------------------------------
    async def _on_status(self, msg: Msg) -> None:
        try:
            batch = _status_req(msg.data).batch_id
            reply: BatchStatus | Error = await self.status(batch)
        except ProtocolError as exc:
            reply = Error(code=exc.code, message=exc.message)
        except Exception as exc:  # JetStream unavailable
            reply = Error(code=ErrorCode.INTERNAL, message=f"batch status: {exc!r}")
        await msg.respond(encode(reply))

    async def status(self, batch: str) -> BatchStatus:
        await self._check_known(batch)
        waiting = await store.waiting(self.js, self.subjects, batch)
        done, failed_, empty = await store.outcomes(self.js, self.subjects, batch)
        in_flight = sum(f.batch_id == batch for f in self.flights.values())
        return BatchStatus(
            batch_id=batch, total=done + failed_ + waiting, done=done, failed=failed_,
            empty=empty, in_flight=in_flight, queued=max(0, waiting - in_flight),
            cancelled=await self._is_cancelled(batch),
        )  # fmt: skip

    async def _check_known(self, batch: str) -> None:
        """A valid id of a batch the streams hold something of; else a coded error, so a
        typo is never answered with an empty batch (status) or a marker for nothing (cancel)."""
        self.subjects.batch_submit(batch)  # validates the id
        if not await store.known(self.js, self.subjects, batch):
            raise ProtocolError(ErrorCode.NOT_FOUND, store.UNKNOWN)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            batch = _cancel_req(msg.data).batch_id
            await self._check_known(batch)
        except ProtocolError as exc:
            await msg.respond(encode(Error(code=exc.code, message=exc.message)))
            return
        marker = encode(BatchCancelRequest(batch_id=batch))
        headers = {"Nats-Msg-Id": f"cancel.{batch}"}
        await self.js.publish(self.subjects.batch_cancelled(batch), marker, headers=headers)
        self._cancelled.add(batch)
        running = [f for f in self.flights.values() if f.batch_id == batch and not f.settling]
        for flight in running:  # in process: the orchestrator's role needs no api.cancel right
            await self.service.cancel(flight.job_id)
        self._changed.set()
        await msg.respond(encode(BatchCancelReply(batch_id=batch, running_cancelled=len(running))))


def _decode(msg: Msg) -> tuple[BatchJob | None, str, Error | None]:
    """(job, custom_id, error): an undecodable message is still a job with an id to fail."""
    headers = msg.headers or {}
    custom_id = headers.get(CUSTOM_ID) or headers.get("Nats-Msg-Id", "").partition(".")[2]
    if not is_valid_id(custom_id):
        custom_id = f"seq-{msg.metadata.sequence.stream}"
    if REJECTED in headers:
        return None, custom_id, Error(code=ErrorCode.INVALID_PARAMS, message=headers[REJECTED])
    try:
        job = _job(msg.data)
    except ProtocolError as exc:
        return None, custom_id, Error(code=exc.code, message=exc.message)
    if not is_valid_id(job.custom_id):
        message = f"custom_id {job.custom_id[:80]!r} must match [A-Za-z0-9_-]{{1,64}}"
        return None, custom_id, Error(code=ErrorCode.INVALID_ID, message=message)
    return job, job.custom_id, None
