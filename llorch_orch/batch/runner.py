"""The batch runner inside the orchestrator process: pulls jobs from `LLORCH_BATCH` when the
core has room, submits them at batch priority through `OrchestratorService.submit`, collects
their events from its own inbox, stores one result each in `LLORCH_RESULTS`, then acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import traceback
from collections.abc import Awaitable
from dataclasses import dataclass, field

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import TimeoutError as NatsTimeout
from nats.js.client import JetStreamContext
from opentelemetry import metrics

from llorch_common.aio import wait_event
from schemas import (
    MAX_MESSAGE_BYTES,
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
    check_id,
    decoder,
    encode,
    is_valid_id,
    new_id,
)
from schemas.batch import NoticeOutcome
from schemas.text import clip

from ..core import JobEnded, Notice
from ..service import OrchestratorService
from . import store
from .collect import Collector, failed, has_room, retry_delay, to_request
from .config import BATCH_STREAM, CONSUMER, BatchConfig, consumer

log = logging.getLogger("llorch.batch")

Batch = tuple[str, str]  # (producer, batch id): a batch id is unique only in its namespace
JobRef = tuple[str, str, str]  # (producer, batch id, custom id): a job message's subject

FETCH_WAIT_S = 5.0  # long-poll of one pull request
RETRY_S = 1.0  # pause after a JetStream call failed (server away: nats-py reconnects)
STORE_TRIES = 300  # a store failing this often RETRY_S apart (server away ~5 min): nak the job
TICK_S = 1.0  # keepalive / loss check period (each message is kept alive every keepalive_s)
REJECTED = "Llorch-Error"  # header of a line the producer rejected: stored as failed as is

_event = decoder(Event)
_job = decoder(BatchJob)
_status_req = decoder(BatchStatusRequest)
_cancel_req = decoder(BatchCancelRequest)
_dead_letters = metrics.get_meter("llorch.orchestrator").create_counter(
    "llorch.batch.dead_letters",
    "{message}",
    "Batch messages terminated with no result stored, by reason (invalid_batch_id, unstorable)",
)


@dataclass(slots=True)
class Flight:
    """A pulled job message, until its result is stored and it is acked (or nak'ed)."""

    msg: Msg
    producer: str  # the namespace of its batch (the subject's token before the batch id)
    batch_id: str
    custom_id: str
    job_id: str
    delivered: int  # this delivery's number (1 = first)
    collector: Collector
    kept_alive: float  # when in_progress() last went out
    ended_at: float | None = None  # when the core said it ended (its terminal event may follow)
    settling: bool = False


@dataclass
class BatchRunner:
    service: OrchestratorService
    cfg: BatchConfig
    flights: dict[str, Flight] = field(default_factory=dict)  # by job id
    _cancelled: set[Batch] = field(default_factory=set)
    _live: set[Batch] = field(default_factory=set)  # batches known not to be cancelled
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _pull: JetStreamContext.PullSubscription | None = None  # once started
    _subs: list[Subscription] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.nc = self.service.nc
        self.js = self.nc.jetstream()
        self.subjects = self.service.subjects
        self._inbox = f"{self.nc.new_inbox()}.batch"
        self._submit_prefix = self.subjects.batch_submit_all.removesuffix("*.*.*")

    async def start(self) -> None:
        await store.ensure_streams(self.js, self.cfg, self.subjects)
        await self.js.add_consumer(BATCH_STREAM, consumer(self.cfg, self.subjects))
        self._pull = await self.js.pull_subscribe_bind(CONSUMER, BATCH_STREAM)
        self.service.on_notices(self._ended)
        for subject, queue, cb in (
            (f"{self._inbox}.*", "", self._on_event),
            (self.subjects.batch_api_all("status"), "orch", self._on_status),
            # every orchestrator hears a cancel: each stops the jobs it runs
            (self.subjects.batch_api_all("cancel"), "", self._on_cancel),
        ):
            self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=cb))
        self._background(self._pull_loop())
        self._background(self._tick_loop())

    async def stop(self) -> None:
        """Hand unfinished jobs back at once (nak) so a successor need not wait for ack_wait.

        The pull subscription goes first: nats-py's fetch takes messages off its queue without
        marking them done, so a connection drain would wait on it until its drain timeout."""
        if self._pull is not None:
            with contextlib.suppress(Exception):  # a connection already gone has no interest
                await self._pull.unsubscribe()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
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
            for msg in await self._fetch():
                await self._process(msg)

    async def _fetch(self) -> list[Msg]:
        try:
            assert self._pull is not None  # the loop starts after the subscription
            return await self._pull.fetch(1, timeout=FETCH_WAIT_S)
        except NatsTimeout:
            return []
        except Exception as exc:  # server restarting, connection lost: nats-py reconnects
            log.warning("batch pull failed: %r", exc)
            await asyncio.sleep(RETRY_S)
            return []

    async def _process(self, msg: Msg) -> None:
        """Take one pulled message. Whatever goes wrong, the message is settled here: left
        unacked it would come back until max_deliver, hold a max_ack_pending slot meanwhile,
        then sit in the work queue for good."""
        try:
            await self._take(msg)
        except Exception as exc:
            if store.transient(exc):  # the server went away mid-take: try it again soon
                log.warning("batch message on %s handed back: %r", clip(msg.subject), exc)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=RETRY_S)
                return
            await self._fail(msg, _internal(exc))

    async def _wait_for_room(self) -> None:
        core = self.service.core
        while True:
            waiting, pools = core.waiting_count("batch"), core.live_pools()
            if has_room(waiting, len(self.flights), pools, self.cfg):
                return
            self._changed.clear()
            await wait_event(self._changed, TICK_S)  # core changes we hear of wake us earlier

    async def _take(self, msg: Msg) -> None:
        ids = self._job_of(msg)
        if ids is None:
            await self._dead_letter(msg, "invalid_batch_id", _no_batch(msg))
            return
        producer, batch, custom_id = ids
        ref = (producer, batch)
        delivered = msg.metadata.num_delivered
        job = _decode(msg, custom_id)
        if await store.has_result(self.js, self.subjects, producer, batch, custom_id):
            # ran before: the stream took this copy once the job's message was acked
            await msg.ack_sync()
            await self._notice(producer, batch, custom_id, "duplicate")
            return
        if isinstance(job, BatchJob) and delivered >= self.cfg.max_deliver:  # kills its owners
            job = Error(code=ErrorCode.INTERNAL, message=f"delivered {delivered} times")
        if isinstance(job, Error):  # the message itself can never run
            await self._fail(msg, job)
            return
        if await self._is_cancelled(ref):
            error = Error(code=ErrorCode.CANCELLED, message=f"batch {batch} cancelled")
            result = failed(batch, custom_id, delivered, self.service.clock(), error)
            await self._store_and_settle(msg, producer, result)
            return
        running = self._running(ref, custom_id)
        if running is not None:  # redelivered while it still runs here (keepalives were lost)
            running.msg, running.delivered = msg, delivered  # adopt the new delivery
            return
        job_id = new_id("bj")
        now = self.service.clock()
        collector = Collector(now, has_stop=bool(job.stop), chat=job.messages is not None)
        flight = Flight(msg, producer, batch, custom_id, job_id, delivered, collector, now)
        self.flights[job_id] = flight
        log.info(
            "batch %s/%s job %s -> %s (delivery %d)", producer, batch, custom_id, job_id, delivered
        )
        # the job's trace continues the producer's (its context rides in the message headers)
        try:
            await self.service.submit(
                to_request(job, job_id),
                f"{self._inbox}.{job_id}",
                msg.headers,
                msg.subject,
                producer=producer,
                batch=batch,
                custom_id=custom_id,
            )
        except Exception:  # settled by _process: no flight may outlive its message
            self._forget(flight)
            raise

    def _job_of(self, msg: Msg) -> JobRef | None:
        """(producer, batch, custom id) a message's subject names; None when a token is no
        valid id, so no result subject can be formed (a subject token may be any length, an
        id may not)."""
        ids = msg.subject.removeprefix(self._submit_prefix).split(".")
        if len(ids) != 3 or not all(map(is_valid_id, ids)):
            return None
        producer, batch, custom_id = ids
        exact = msg.subject == self.subjects.batch_submit(producer, batch, custom_id)
        return (producer, batch, custom_id) if exact else None

    def _running(self, ref: Batch, custom_id: str) -> Flight | None:
        for flight in self.flights.values():
            if _ref(flight) == ref and flight.custom_id == custom_id and not flight.settling:
                return flight
        return None

    async def _is_cancelled(self, ref: Batch) -> bool:
        if ref in self._cancelled:
            return True
        if ref not in self._live:
            if await store.is_cancelled(self.js, self.subjects, *ref):
                self._cancelled.add(ref)
                return True
            self._live.add(ref)
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
        if flight.collector.add(event, self.service.clock()) and not flight.settling:
            flight.settling = True
            self._background(self._settle(flight))

    async def _settle(self, flight: Flight) -> None:
        try:
            terminal = flight.collector.terminal
            delay = retry_delay(terminal, flight.delivered, self.cfg)
            if _ref(flight) in self._cancelled:
                delay = None
            if delay is not None:
                code = terminal.code if isinstance(terminal, Error) else "lost"
                log.info("batch job %s failed (%s): retry in %.1fs", flight.custom_id, code, delay)
                with contextlib.suppress(Exception):  # unacked anyway: redelivered after ack_wait
                    await flight.msg.nak(delay=delay)
                await self._notice(flight.producer, flight.batch_id, flight.custom_id, "retry")
                return
            now = self.service.clock()
            result = flight.collector.result(
                flight.batch_id, flight.custom_id, flight.delivered, now
            )
            await self._store_and_settle(flight.msg, flight.producer, result)
        except Exception as exc:  # a bug: the job still gets a result, and leaves the flights
            await self._fail(flight.msg, _internal(exc))
        finally:
            self._forget(flight)

    def _forget(self, flight: Flight) -> None:
        self.flights.pop(flight.job_id, None)
        self._changed.set()

    async def _fail(self, msg: Msg, error: Error) -> None:
        """A message that can never run: its error stored as the job's result, then the
        message terminated (never redelivered). No job ids: dead-lettered instead."""
        ids = self._job_of(msg)
        if ids is None:
            await self._dead_letter(msg, "invalid_batch_id", _no_batch(msg))
            return
        producer, batch, custom_id = ids
        result = failed(batch, custom_id, msg.metadata.num_delivered, self.service.clock(), error)
        term = f"{error.code}: {clip(error.message)}"
        await self._store_and_settle(msg, producer, result, term=term)

    async def _store_and_settle(
        self, msg: Msg, producer: str, result: BatchResult, term: str | None = None
    ) -> None:
        """Ack the message (terminate it, with the reason `term`) only once its result is
        durable. A crash between the two is harmless: the redelivered message finds its
        result and is acked unrun."""
        stored = await self._store(msg, producer, result)
        if stored is None:
            return
        try:
            if term is None:
                await msg.ack_sync()
            else:
                await self._term(msg, term)
        except Exception as exc:  # stored: a redelivered copy is acked as a duplicate
            log.warning("settling %s/%s/%s: %r", producer, result.batch_id, result.custom_id, exc)
        await self._notice(producer, stored.batch_id, stored.custom_id, stored.outcome)

    async def _store(self, msg: Msg, producer: str, result: BatchResult) -> BatchResult | None:
        """The result as stored (store.store may put a stand-in in its place), or None when
        the message was handed back or dead-lettered instead. A failure that would repeat
        (the stream refused the message) is not retried: a stand-in that says why is stored
        once instead, and if that is refused too the message is dead-lettered. While the
        server is away it is tried again every RETRY_S (the tick loop keeps in-flight jobs
        alive meanwhile), at most STORE_TRIES times, then nak'ed (it runs again later)."""
        limit = min(self.nc.max_payload, MAX_MESSAGE_BYTES)
        refused = False
        tries = 0
        while True:
            try:
                return await store.store(
                    self.js, self.subjects, producer, result, msg.headers, limit
                )
            except Exception as exc:
                where = f"{producer}/{result.batch_id}/{result.custom_id}"
                reason = clip(repr(exc), 200)
                if not store.transient(exc):
                    if refused:
                        await self._dead_letter(msg, "unstorable", f"{where}: {reason}")
                        return None
                    log.warning("storing %s refused: %s; storing the error instead", where, reason)
                    error = Error(code=ErrorCode.INTERNAL, message=f"result not storable: {reason}")
                    result, refused = store.stand_in(result, error), True
                    continue
                tries += 1
                if tries >= STORE_TRIES:
                    log.warning(
                        "storing %s: %s; gave up after %d tries, job nak'ed", where, reason, tries
                    )
                    with contextlib.suppress(Exception):
                        await msg.nak()
                    return None
                log.warning("storing %s: %s", where, reason)
                await asyncio.sleep(RETRY_S)

    async def _term(self, msg: Msg, reason: str) -> None:
        """JetStream `+TERM <reason>`: never redelivered, removed from the work queue, and the
        reason is in the server's MSG_TERMINATED advisory (nats-py's Msg.term() sends none)."""
        await self.nc.publish(msg.reply, b"+TERM " + reason.encode())

    async def _dead_letter(self, msg: Msg, kind: str, reason: str) -> None:
        """A message no result can be stored for: terminated, counted, one bounded log line.
        Its content is not kept: it names no batch a consumer would read, and may be 1 MiB."""
        _dead_letters.add(1, {"reason": kind})
        seq = msg.metadata.sequence.stream
        log.error("batch message %d dead-lettered (%s): %s", seq, kind, reason)
        with contextlib.suppress(Exception):  # lost: it comes back and is dead-lettered again
            await self._term(msg, f"dead letter ({kind}): {reason}")

    async def _notice(
        self, producer: str, batch: str, custom_id: str, outcome: NoticeOutcome
    ) -> None:
        event = BatchEvent(batch_id=batch, custom_id=custom_id, outcome=outcome)
        with contextlib.suppress(Exception):  # a notice only: results are the record
            await self.nc.publish(self.subjects.batch_event(producer, batch), encode(event))

    # ---- keepalive and loss ----------------------------------------------------------------
    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.service.clock()
            for flight in list(self.flights.values()):
                if now - flight.kept_alive >= self.cfg.keepalive_s:
                    flight.kept_alive = now
                    with contextlib.suppress(Exception):  # server away: it redelivers later
                        await flight.msg.in_progress()
                self._check_lost(flight, now)

    def _ended(self, notices: list[Notice]) -> None:
        """The core's notices: a job of ours ended there (its terminal event is on its way)."""
        for notice in notices:
            flight = self.flights.get(notice.job_id)
            if isinstance(notice, JobEnded) and flight is not None:
                flight.ended_at = self.service.clock()
                self._changed.set()

    def _check_lost(self, flight: Flight, now: float) -> None:
        """A job the core ended whose terminal event never reached us (lost while the server
        was away) is retried once the events in flight had time to land."""
        if flight.settling or flight.ended_at is None:
            return
        if now - flight.ended_at >= self.cfg.lost_grace_s:
            message = "job ended without a terminal event reaching the batch runner"
            lost = Error(code=ErrorCode.WORKER_LOST, message=message, retriable=True)
            flight.collector.add(lost, now)
            flight.settling = True
            self._background(self._settle(flight))

    # ---- request/reply API ---------------------------------------------------------------
    async def _on_status(self, msg: Msg) -> None:
        try:
            ref = (_producer_of(msg), _status_req(msg.data).batch_id)
            reply: BatchStatus | Error = await self.status(ref)
        except ProtocolError as exc:
            reply = Error(code=exc.code, message=exc.message)
        except Exception as exc:  # JetStream unavailable: for good, or while a cluster elects
            code = ErrorCode.UNAVAILABLE if store.transient(exc) else ErrorCode.INTERNAL
            message = f"batch status: {exc!r}"
            reply = Error(code=code, message=message, retriable=store.transient(exc))
        await msg.respond(encode(reply))

    async def status(self, ref: Batch) -> BatchStatus:
        await self._check_known(ref)
        waiting = await store.waiting(self.js, self.subjects, *ref)
        done, failed_, empty = await store.outcomes(self.js, self.subjects, *ref)
        in_flight = sum(_ref(f) == ref for f in self.flights.values())
        return BatchStatus(
            batch_id=ref[1],
            total=done + failed_ + waiting,
            done=done,
            failed=failed_,
            empty=empty,
            in_flight=in_flight,
            queued=max(0, waiting - in_flight),
            cancelled=await self._is_cancelled(ref),
        )

    async def _check_known(self, ref: Batch) -> None:
        """Valid ids of a batch the streams hold something of; else a coded error, so a
        typo is never answered with an empty batch (status) or a marker for nothing (cancel).
        Known means known in the caller's namespace: another producer's batch of the same id
        is NOT_FOUND here."""
        self.subjects.batch_submit(*ref)  # validates the ids
        if not await store.known(self.js, self.subjects, *ref):
            raise ProtocolError(ErrorCode.NOT_FOUND, store.UNKNOWN)

    async def _on_cancel(self, msg: Msg) -> None:
        try:
            ref = (_producer_of(msg), _cancel_req(msg.data).batch_id)
            await self._check_known(ref)
        except ProtocolError as exc:
            await msg.respond(encode(Error(code=exc.code, message=exc.message)))
            return
        producer, batch = ref
        marker = encode(BatchCancelRequest(batch_id=batch))
        headers = {"Nats-Msg-Id": f"cancel.{producer}.{batch}"}
        subject = self.subjects.batch_cancelled(producer, batch)
        await self.js.publish(subject, marker, headers=headers)
        self._cancelled.add(ref)
        running = [f for f in self.flights.values() if _ref(f) == ref and not f.settling]
        for flight in running:  # in process: the orchestrator's role needs no api.cancel right
            await self.service.cancel(flight.job_id)
        self._changed.set()
        await msg.respond(encode(BatchCancelReply(batch_id=batch, running_cancelled=len(running))))


def _ref(flight: Flight) -> Batch:
    return flight.producer, flight.batch_id


def _producer_of(msg: Msg) -> str:
    """The namespace of a status or cancel request: its subject's token before the verb, the
    one token a producer's permissions let it publish under (`<p>.api.batch.<producer>.*`)."""
    return check_id(msg.subject.split(".")[-2], "producer")


def _decode(msg: Msg, custom_id: str) -> BatchJob | Error:
    """The job of the subject's `custom_id`, or why it cannot run. The subject is the job's
    key (its de-duplication and its result's subject), so a body naming another id is
    refused rather than stored under an id its producer did not mean."""
    headers = msg.headers or {}
    if REJECTED in headers:
        return Error(code=ErrorCode.INVALID_PARAMS, message=headers[REJECTED])
    try:
        job: BatchJob = _job(msg.data)
    except ProtocolError as exc:
        return Error(code=exc.code, message=exc.message)
    if job.custom_id != custom_id:
        message = f"custom_id {clip(job.custom_id)!r} is not the subject's {custom_id!r}"
        return Error(code=ErrorCode.INVALID_ID, message=message)
    return job


def _no_batch(msg: Msg) -> str:
    tail = msg.subject.partition(".batch.submit.")[2]
    return (
        f"subject tail {clip(tail)!r} ({len(tail)} characters) is not "
        "<producer>.<batch>.<custom_id> ids"
    )


def _internal(exc: Exception) -> Error:
    """A bug met while processing a message: one bounded log line (what, and where) and the
    INTERNAL error stored for its job."""
    frame = traceback.extract_tb(exc.__traceback__)[-1]
    log.error("batch runner: %s at %s:%s", clip(repr(exc), 200), frame.filename, frame.lineno)
    return Error(code=ErrorCode.INTERNAL, message=f"batch runner: {clip(repr(exc), 200)}")
