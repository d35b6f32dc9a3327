"""The orchestrator's NATS shell: decode, feed the core, carry out its commands."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import Service
from opentelemetry import trace
from opentelemetry.context import Context

import schemas
from llorch_common import tracing
from llorch_common.aio import wait_event
from llorch_common.fence import with_epoch
from schemas import (
    Ack,
    CancelReply,
    CancelRequest,
    Error,
    ErrorCode,
    GenerateRequest,
    Heartbeat,
    JobGetRequest,
    JobStatus,
    Leadership,
    ProtocolError,
    SnapshotRequest,
    Subjects,
    WorkerCancel,
    WorkerFailed,
    WorkerLoad,
    WorkerReady,
    decoder,
    encode,
    new_id,
)
from schemas.codec import wire_size
from schemas.subjects import is_publish_subject
from schemas.text import clip

from .core import (
    AbandonOnWorker,
    Answered,
    CancelOnWorker,
    Core,
    Emit,
    JobEnded,
    Notice,
    Output,
    Pending,
    SendExecute,
    Spawn,
    Stop,
)
from .core import events as ev
from .core.report import cluster_state, models
from .core.tenancy import ANYONE, Caller, Tenancy, inbox_identity
from .eventlog import EventLog
from .telemetry import Routed, Telemetry, tracer

log = logging.getLogger("llorch.orch")

MAX_TICK_S = 1.0  # the timer wakes at least this often
CONTROL_TIMEOUT_S = 10.0  # spawn/stop/cancel request timeouts
# Room a generate request must leave under the server's max payload: its execute carries the
# same text plus fields of our own (ids, the stream, numbers: < 1 KiB) and trace headers.
EXECUTE_ROOM = 16 * 1024
STEPPED_DOWN = "this orchestrator no longer leads: ask again"

_generate = decoder(GenerateRequest)
_cancel = decoder(CancelRequest)
_job_get = decoder(JobGetRequest)
_heartbeat = decoder(Heartbeat)
_ready = decoder(WorkerReady | WorkerFailed | WorkerLoad)
_status = decoder(JobStatus)
_reply = decoder(Ack | Error)
_abandon_reply = decoder(JobStatus | Ack | Error)  # the job's final status, or "not running"


class OrchestratorService:
    def __init__(
        self,
        nc: Client,
        core: Core,
        subjects: Subjects | None = None,
        clock: Callable[[], float] = time.time,
        tenancy: Tenancy | None = None,
        record: EventLog | None = None,
        leadership: Leadership | None = None,
    ) -> None:
        """`record`: where every event fed to the core goes, with its outputs (a replay checks
        them: `python -m llorch_orch.replay`). `leadership`: the lead this service serves in
        (its epoch goes with every command); None: epoch 0, for a bus with one orchestrator
        that never leads through the lease (tests of the service alone)."""
        self.nc = nc
        self.core = core
        self.subjects = subjects or Subjects()
        self.clock = clock
        self.tenancy = tenancy or Tenancy()
        self.telemetry = Telemetry(core, self.subjects)
        self.record = record
        self._listeners: list[Callable[[list[Notice]], None]] = []
        self._lock = asyncio.Lock()  # one handle+execute at a time keeps command order
        self._wake = asyncio.Event()
        self._inbox = f"{nc.new_inbox()}.exec"
        self._tasks: set[asyncio.Task[object]] = set()
        self._timer: asyncio.Task[None] | None = None
        self.leadership = leadership
        self.epoch = leadership.epoch if leadership else 0
        self.deposed = asyncio.Event()  # a pool or worker refused us: a newer leader leads
        self._subs: list[Subscription] = []
        self._micro: Service | None = None

    async def start(self) -> None:
        s = self.subjects
        for subject, queue, cb in (
            (s.generate, "orch", self._on_generate),
            (s.heartbeat_all, "", self._on_heartbeat),
            (s.ready_all, "", self._on_ready),
            (s.job_status_all, "", self._on_status),
            (f"{self._inbox}.>", "", self._on_execute_reply),
        ):
            self._subs.append(await self.nc.subscribe(subject, queue=queue, cb=cb))
        self._micro = service = await add_service(
            self.nc,
            name="llorch-orchestrator",
            version="0.1.0",
            description="llorch orchestrator: admission, queue, placement",
        )
        for name, subject, handler in (
            ("cancel", s.cancel, self._on_cancel),
            ("jobs-get", s.jobs_get, self._on_job_get),
            ("state", s.state, self._on_state),
            ("models", s.models, self._on_models),
        ):
            await service.add_endpoint(name=name, subject=subject, handler=_traced(handler))
        self.telemetry.gauges(asyncio.get_running_loop())
        self._timer = asyncio.create_task(self._timer_loop())
        if self.leadership is not None:  # pools and workers fence older leads from now on
            await self._publish(s.leader, self.leadership, to_client=False)
        await self._publish(s.snapshot_request, SnapshotRequest(), to_client=False)

    async def resign(self) -> None:
        """Step down without a word to any client: a newer leader serves them now (a job only
        we knew is resubmitted by its client when the new leader announces itself). Stops
        listening, the timer and every background request."""
        if self._micro is not None:
            with contextlib.suppress(Exception):  # a connection already gone has no interest
                await self._micro.stop()
        for sub in self._subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self.telemetry.retire()
        tasks = [*self._tasks, *([self._timer] if self._timer else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def stop(self) -> None:
        """Jobs still queued end now with a retriable UNAVAILABLE, published before the caller
        drains the connection (running jobs stream on, worker to client); then the timer stops."""
        await self._feed(ev.Shutdown(self.clock()))
        if self._timer is not None:
            self._timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._timer

    # ---- feeding the core ----------------------------------------------------------------
    def on_notices(self, listener: Callable[[list[Notice]], None]) -> None:
        """Hear what the core tells about jobs (`JobEnded`, `Pending`) after each event."""
        self._listeners.append(listener)

    async def _feed(self, event: ev.Event) -> list[Output]:
        """The one way into the core: handle, record, observe, carry out, tell listeners.
        Once deposed, nothing goes in or out: what we would send a client or a worker now is
        the newer leader's to decide."""
        async with self._lock:
            if self.deposed.is_set():
                return []
            outputs = self.core.handle(event)
            if self.record is not None:
                self.record.write(event, outputs)
            await self._carry_out(self.telemetry.observe(event, outputs, self.clock()))
            notices: list[Notice] = [o for o in outputs if isinstance(o, JobEnded | Pending)]
            for listener in self._listeners if notices else ():
                listener(notices)
        self._wake.set()
        return outputs

    async def _carry_out(self, routed: list[Routed]) -> None:
        for each in routed:
            await self._execute(each)

    async def _execute(self, routed: Routed) -> None:
        headers, parent = routed.headers, routed.parent
        match routed.command:
            case Emit(subject=subject, event=event):
                await self._publish(subject, event, headers=headers)
            case SendExecute(worker_id=worker_id, execute=execute, attempt=attempt):
                reply = f"{self._inbox}.{execute.job_id}.{attempt}.{worker_id}"
                subject = self.subjects.execute(worker_id)
                await self._publish(subject, execute, reply, headers, to_client=False)
            case Spawn(pool_id=pool_id, request=request):
                self._background(self._spawn(pool_id, request, parent))
            case Stop(pool_id=pool_id, request=request, reason=reason):
                log.info("stopping worker %s (%s)", request.worker_id, reason)
                subject = self.subjects.stop(pool_id)
                self._background(self._request(subject, request, parent, pool=pool_id))
            case CancelOnWorker(worker_id=worker_id, job_id=job_id):
                subject = self.subjects.worker_cancel(worker_id)
                cancel = WorkerCancel(job_id=job_id)
                self._background(self._request(subject, cancel, parent, worker=worker_id))
            case AbandonOnWorker(worker_id=worker_id, job_id=job_id):
                self._background(self._abandon(worker_id, job_id, parent))

    async def _publish(
        self,
        subject: str,
        message: object,
        reply: str = "",
        headers: dict[str, str] | None = None,
        to_client: bool = True,
    ) -> None:
        """Every message the service sends: never one over the server's max payload (the
        server closes a connection that sends one, and nats-py does not come back from that).
        An oversized message to a client (stream event, API reply) is replaced by a coded
        INTERNAL error; an oversized control message is not sent (an execute cannot be:
        `_on_generate` keeps EXECUTE_ROOM free)."""
        if not to_client or self.epoch:  # a client drops an event of a lead that has passed
            headers = with_epoch(headers, self.epoch)
        if (fitted := self._fit(subject, message, headers, to_client)) is not None:
            await self.nc.publish(subject, fitted[0], reply=reply, headers=fitted[1])

    def _fit(
        self, subject: str, message: object, headers: dict[str, str] | None, to_client: bool
    ) -> tuple[bytes, dict[str, str] | None] | None:
        """`message` encoded with its headers, its replacement, or None: not to be sent."""
        data = encode(message)
        size = wire_size(data, headers)
        if size <= self.nc.max_payload:
            return data, headers
        what = type(message).__name__
        limit = self.nc.max_payload
        log.error(
            "not sending a %s of %d bytes to %s (max payload %d)", what, size, clip(subject), limit
        )
        if not to_client:
            return None
        error = Error(
            code=ErrorCode.INTERNAL,
            message=f"{what} over the max payload",
            seq=getattr(message, "seq", None),
            job_id=getattr(message, "job_id", None),
        )
        return encode(error), None

    def _background(self, coro: Awaitable[object]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _request(
        self,
        subject: str,
        message: object,
        parent: Context,
        decode: Callable[[bytes], Ack | Error | JobStatus] = _reply,
        **ids: str,
    ) -> Ack | Error | JobStatus:
        """A control request in its CLIENT span (child of `parent`); `ids` name the subject's
        id tokens for the span name."""
        name = tracing.template(subject, **ids)
        attrs = tracing.messaging("send", subject, name)
        span = tracer.start_span(tracing.span_name("send", name), parent, tracing.CLIENT, attrs)
        with trace.use_span(span, end_on_exit=True):
            headers = with_epoch(tracing.inject(), self.epoch)
            reply = await self._request_once(subject, message, headers, decode)
            if isinstance(reply, Error):
                span.set_status(trace.StatusCode.ERROR, reply.code)
                self._refused(reply)
        return reply

    def _refused(self, error: Error) -> None:
        """A pool or worker refused a command of ours as stale: we no longer lead."""
        if error.code == ErrorCode.STALE_LEADER and not self.deposed.is_set():
            log.warning("a command was refused: %s", error.message)
            self.deposed.set()

    async def _request_once(
        self,
        subject: str,
        message: object,
        headers: dict[str, str] | None,
        decode: Callable[[bytes], Ack | Error | JobStatus],
    ) -> Ack | Error | JobStatus:
        try:
            msg = await self.nc.request(
                subject, encode(message), timeout=CONTROL_TIMEOUT_S, headers=headers
            )
            reply = decode(msg.data)
        except ProtocolError as exc:
            return Error(code=exc.code, message=exc.message)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError) as exc:
            # nobody there (a pool restarting, a worker gone): not a refusal by the receiver
            return Error(code=ErrorCode.UNAVAILABLE, message=f"{subject}: {exc!r}")
        except Exception as exc:  # closed connection and the like
            return Error(code=ErrorCode.INTERNAL, message=f"{subject}: {exc!r}")
        return reply

    async def _spawn(self, pool_id: str, request: schemas.SpawnRequest, parent: Context) -> None:
        subject = self.subjects.spawn(pool_id)
        reply = await self._request(subject, request, parent, pool=pool_id)
        if isinstance(reply, Error):
            why = clip(reply.message, 200)
            log.warning("spawn of %s on %s refused: %s", request.worker_id, pool_id, why)
            refused = ev.SpawnRefused(self.clock(), request.worker_id, reply.code, reply.message)
            await self._feed(refused)

    async def _abandon(self, worker_id: str, job_id: str, parent: Context) -> None:
        """Ask a worker whose pool was lost to stop streaming a job, silently. It answers once
        the job has stopped, with the job's final status (where it stopped); no responders or no
        answer in CONTROL_TIMEOUT_S means it is gone (or hung past help). Either way the core
        may then retry the job: its old worker no longer streams it."""
        subject = self.subjects.worker_cancel(worker_id)
        abandon = WorkerCancel(job_id=job_id, abandon=True)
        reply = await self._request(subject, abandon, parent, _abandon_reply, worker=worker_id)
        if isinstance(reply, JobStatus) and (reply.job_id, reply.worker_id) == (job_id, worker_id):
            await self._feed(ev.StatusSeen(self.clock(), reply))
        await self._feed(ev.AbandonAnswered(self.clock(), job_id, worker_id))

    async def reconnected(self) -> None:
        """Our connection is back (nats-py's reconnected callback): loss timers restart, and
        every pool beats at once rather than at its next interval (the heartbeats sent while we
        were away were lost), so its models are served again as soon as we are back."""
        await self._feed(ev.Reconnected(self.clock()))
        await self._publish(self.subjects.snapshot_request, SnapshotRequest(), to_client=False)

    async def _timer_loop(self) -> None:
        while True:
            if not self.nc.is_connected:  # what we cannot hear now must not count as silence
                self._wake.clear()
                await wait_event(self._wake, MAX_TICK_S)
                continue
            wake = self.core.next_wake()
            delay = MAX_TICK_S if wake is None else min(MAX_TICK_S, wake - self.clock())
            self._wake.clear()
            if delay > 0:
                await wait_event(self._wake, delay)
                continue
            await self._feed(ev.Tick(self.clock()))

    # ---- subscriptions -------------------------------------------------------------------
    async def _on_generate(self, msg: Msg) -> None:
        # No reply can reach a client whose reply subject is not one to publish to (a
        # wildcard, a space): dropped before admission, so no worker is ever sent it.
        if not is_publish_subject(msg.reply):
            log.warning("generate request dropped: bad reply subject %r", clip(msg.reply))
            return
        try:
            if wire_size(msg.data, msg.headers) + EXECUTE_ROOM > self.nc.max_payload:
                raise ProtocolError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"request of {len(msg.data)} bytes leaves no room for its execute under "
                    f"the max payload {self.nc.max_payload} (send at most "
                    f"{self.nc.max_payload - EXECUTE_ROOM} bytes, headers included)",
                )
            request = _generate(msg.data)
        except ProtocolError as exc:
            await self._publish(msg.reply, Error(code=exc.code, message=exc.message, seq=0))
            return
        await self.submit(request, msg.reply, msg.headers, owner=inbox_identity(msg.reply))

    async def submit(
        self,
        request: GenerateRequest,
        reply_to: str,
        headers: dict[str, str] | None = None,
        subject: str | None = None,
        owner: str | None = None,
        **ids: str,
    ) -> None:
        """Admit a job whose events go to `reply_to` (interactive clients and the batch runner).

        `headers` of the message that brought it carry the sender's trace context, `subject`
        (default: the generate subject) names the job's span, with its `ids` (`batch=...`)
        templated out; `owner` is the identity it belongs to (`core.tenancy`)."""
        job_id = request.job_id or new_id("job")  # named here: the shell follows its span
        request = msgspec.structs.replace(request, job_id=job_id)
        subject = subject or self.subjects.generate
        name = tracing.template(subject, **ids)
        event = ev.Submit(self.clock(), request, reply_to, headers, subject, name, owner)
        try:
            await self._feed(event)
        except Exception:  # a bug: the client still gets its one terminal, the record its end
            log.exception("job %s: admission failed", clip(job_id))
            if self.core.job_info(job_id) is None:
                error = Error(
                    code=ErrorCode.INTERNAL, message="admission failed", seq=0, job_id=job_id
                )
                failed: list[Output] = [Emit(reply_to, error, job_id)]
                async with self._lock:
                    await self._carry_out(self.telemetry.observe(None, failed, self.clock()))

    async def _on_heartbeat(self, msg: Msg) -> None:
        await self._decode_and_feed(
            msg,
            _heartbeat,
            lambda hb: ev.HeartbeatSeen(self.clock(), hb),
            lambda hb: self.subjects.heartbeat(hb.pool_id),
        )

    async def _on_ready(self, msg: Msg) -> None:
        def event(m: WorkerReady | WorkerFailed | WorkerLoad) -> ev.Event | None:
            if isinstance(m, WorkerReady):
                return ev.ReadySeen(self.clock(), m)
            if isinstance(m, WorkerFailed):
                return ev.FailedSeen(self.clock(), m)
            return None  # its pool's heartbeats carry it; our own dispatches count our jobs

        await self._decode_and_feed(msg, _ready, event, lambda m: self.subjects.ready(m.worker_id))

    async def _on_status(self, msg: Msg) -> None:
        await self._decode_and_feed(
            msg,
            _status,
            lambda status: ev.StatusSeen(self.clock(), status),
            lambda s: self.subjects.job_status(s.job_id),
        )

    async def _decode_and_feed(
        self,
        msg: Msg,
        decode: Callable[[bytes], object],
        make: Callable[..., ev.Event | None],
        subject_of: Callable[..., str],
    ) -> None:
        """The server's permissions bind a subject to its sender (only pool X may publish
        `pool.X.heartbeat`), so a body naming another pool, worker or job is a forgery."""
        try:
            message = decode(msg.data)
            if subject_of(message) != msg.subject:
                raise ProtocolError(ErrorCode.INVALID_ID, "the body names another sender")
        except ProtocolError as exc:
            log.warning("dropped bad message on %s: %s", clip(msg.subject), exc)
            return
        if (event := make(message)) is not None:
            await self._feed(event)

    async def _on_execute_reply(self, msg: Msg) -> None:
        parts = msg.subject[len(self._inbox) + 1 :].split(".", 2)
        if len(parts) != 3:  # not a reply subject we made: garbage from a reply-inbox writer
            return
        job_id, _attempt, worker_id = parts
        now = self.clock()
        if msg.headers and msg.headers.get("Status") == "503":
            await self._feed(ev.ExecuteRefused(now, job_id, worker_id, ErrorCode.WORKER_LOST))
            return
        try:
            reply = _reply(msg.data)
        except ProtocolError:
            reply = Error(code=ErrorCode.INTERNAL, message="bad execute reply")
        if isinstance(reply, Ack):
            await self._feed(ev.ExecuteAccepted(now, job_id, worker_id))
        else:
            self._refused(reply)
            await self._feed(ev.ExecuteRefused(now, job_id, worker_id, reply.code, reply.message))

    # ---- request/reply API ---------------------------------------------------------------
    async def _on_cancel(self, req: Request) -> None:
        if (message := await self._decoded(req, _cancel)) is not None:
            await self._respond(req, await self.cancel(message.job_id, self._caller(req)))

    async def cancel(self, job_id: str, caller: Caller = ANYONE) -> CancelReply | Error:
        """Cancel a job of `caller`'s (the API endpoint; the in-process batch runner may cancel
        any)."""
        outputs = await self._feed(ev.Cancel(self.clock(), job_id, caller))
        answers = [o.reply for o in outputs if isinstance(o, Answered)]
        return (
            answers[0]
            if answers
            else Error(code=ErrorCode.UNAVAILABLE, message=STEPPED_DOWN, retriable=True)
        )

    async def _on_job_get(self, req: Request) -> None:
        if (message := await self._decoded(req, _job_get)) is not None:
            job_id = message.job_id
            info = self.core.job_info(job_id, self._caller(req))
            missing = Error(code=ErrorCode.NOT_FOUND, message=f"no job {job_id}")
            await self._respond(req, info or missing)

    async def _on_state(self, req: Request) -> None:
        state = cluster_state(self.core, self.clock(), self._caller(req))
        await self._respond(req, msgspec.structs.replace(state, leader=self.leadership))

    def _caller(self, req: Request) -> Caller:
        """Who sent an API request: the identity of its reply inbox. nats-py's micro Request
        keeps the reply subject only on the message it wraps."""
        return self.tenancy.caller(req._msg.reply)

    async def _on_models(self, req: Request) -> None:
        await self._respond(req, models(self.core))

    async def _decoded(self, req: Request, decode: Callable[[bytes], Any]) -> Any:
        """The request's message, or None once a coded error has been sent back."""
        try:
            return decode(req.data)
        except ProtocolError as exc:
            await self._respond(req, Error(code=exc.code, message=exc.message))
            return None

    async def _respond(self, req: Request, message: object) -> None:
        """Reply with the current span's context (a reply carries no headers of its own)."""
        fitted = self._fit(req.subject, message, tracing.inject(), to_client=True)
        assert fitted is not None  # a reply always fits, or its replacement does
        await req.respond(*fitted)


def _traced(handler: Callable[[Request], Awaitable[None]]) -> Callable[[Request], Awaitable[None]]:
    """An API handler in a SERVER span, child of the request's trace context."""

    async def serve(req: Request) -> None:
        span = tracing.serving(tracer, req.subject, req.headers)
        with trace.use_span(span, end_on_exit=True):
            await handler(req)

    return serve
