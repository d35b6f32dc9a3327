"""A small NATS client for llorch's API: what the CLI, the HTTP edge, tests and
benchmarks use.

Any NATS client can do the same with plain JSON; this one adds seq de-duplication, the
stall rule (a stream that is silent for `stall_s` is reported as lost, never a hang) and the
start-up rule: while no orchestrator listens (NATS answers "no responders") or the one that
does has heard from no pool yet (UNAVAILABLE), a generate request is sent again for up to
`ready_s`, then reported as UNAVAILABLE, retriable. It was not admitted, so sending it again is
safe. So is a job that waited and was ended, unstarted, by its orchestrator stopping
(UNAVAILABLE, "send the request again"): another orchestrator (a standby, or the same one
restarted) takes it within `ready_s`.

It also rides out a change of leader (docs/protocol.md, "Orchestrator failover"): a job that
has not started yet is sent again, with the same job id, when a new leader announces itself
(the dead one may have held it in its queue) or when its request got no answer at all for
`resend_s`, then twice as long each time up to 8 s (a request published just as its server
died is lost with the connection; one that reached a frozen leader waits there). Admission
of a job id the leader already holds for the same stream is idempotent, so neither can run a
job twice.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError

from llorch_common import tracing
from llorch_common.connect import Credentials
from llorch_common.fence import Fence, epoch_of
from llorch_common.local import servers
from schemas import (
    CancelReply,
    CancelRequest,
    ClusterState,
    End,
    Error,
    ErrorCode,
    Event,
    GenerateRequest,
    JobGetRequest,
    JobInfo,
    ModelsReply,
    ModelsRequest,
    Started,
    StateRequest,
    Subjects,
    Token,
    decoder,
    encode,
    new_id,
)

_event = decoder(Event)
_state = decoder(ClusterState | Error)
_models = decoder(ModelsReply | Error)
_cancel = decoder(CancelReply | Error)
_job = decoder(JobInfo | Error)

T = TypeVar("T")

DEFAULT_STALL_S = 60.0
DEFAULT_READY_S = 10.0  # a stack that is still starting gets this long to start answering
# A request with no answer at all this long is sent again (then after twice as long, up to
# RESEND_MAX_S): a healthy orchestrator answers within milliseconds (`queued`, or the worker's
# `started`), and sending the same job again is harmless (idempotent admission).
DEFAULT_RESEND_S = 1.0
RESEND_MAX_S = 8.0
# A job that waits hears `queued` at least every 15 s (the orchestrator's queued_keepalive_s);
# this long in silence, its orchestrator may no longer hold it (one that stepped down says
# nothing to its clients): it is sent again, which a leader that holds it answers with
# `queued` (idempotent admission).
QUEUED_SILENCE_S = 35.0
_RETRY_FIRST_S, _RETRY_MAX_S = 0.05, 1.0
_NO_RESPONDERS = "503"


class Failed(Exception):
    """A coded error reply, raised where the caller cannot go on without the answer."""

    def __init__(self, error: Error) -> None:
        super().__init__(f"{error.code}: {error.message}")
        self.error = error


def unavailable(subject: str, waited_s: float) -> Error:
    return Error(
        code=ErrorCode.UNAVAILABLE,
        message=f"no orchestrator answers on {subject} (waited {waited_s:g}s); "
        "is `llorch up` (or `llorch orch`) running?",
        retriable=True,
    )


def _no_responders(msg: Msg) -> bool:
    return msg.headers is not None and msg.headers.get("Status") == _NO_RESPONDERS


def _starting(event: Event | None) -> bool:
    """No orchestrator got the request (None: NATS said "no responders"), or one answered
    that it has nothing to serve with yet (no pool has reported)."""
    return event is None or (isinstance(event, Error) and event.code == ErrorCode.UNAVAILABLE)


async def _backoff(delay: float) -> float:
    """Wait `delay` and return the next one: the orchestrator may be a moment from ready."""
    await asyncio.sleep(delay)
    return min(delay * 2, _RETRY_MAX_S)


class _Leaders:
    """One subscription per connection to the leaders' announcements, fanned out to the
    streams waiting on it (a subscription per job would cost every request a round trip),
    and the newest lead heard of (announced, or carried by an orchestrator's event)."""

    def __init__(self) -> None:
        self.waiting: set[asyncio.Queue[Msg | None]] = set()
        self.fence = Fence()

    async def heard(self, msg: Msg) -> None:
        self.fence.heard(msg.data)
        for queue in self.waiting:
            queue.put_nowait(None)  # None: a new leader


_leaders: weakref.WeakKeyDictionary[Client, dict[str, _Leaders]] = weakref.WeakKeyDictionary()


async def _leaders_of(nc: Client, subjects: Subjects) -> _Leaders:
    per_subject = _leaders.setdefault(nc, {})
    if (leaders := per_subject.get(subjects.leader)) is None:
        leaders = per_subject[subjects.leader] = _Leaders()
        await nc.subscribe(subjects.leader, cb=leaders.heard)
    return leaders


async def connect(url: str, credentials: Credentials | None = None, **options: Any) -> Client:
    """A connection as `credentials`: its replies and streams come under the identity's own
    inbox prefix (`_INBOX.<user or nkey>`), the only one the server lets it read."""
    creds = (credentials or Credentials()).connect_options()
    return await nats.connect(servers(url), **options, **creds)


@dataclass
class _Asking:
    """One job's request, and the rules for sending it again (the same job id each time)."""

    nc: Client
    subject: str
    data: bytes
    inbox: str
    headers: dict[str, str] | None
    stall_s: float
    ready_s: float
    resend_s: float
    clock: Callable[[], float]
    leaders: _Leaders
    sent_at: float = 0.0
    heard_at: float = 0.0
    give_up_at: float = 0.0  # refusals "not ready" are answered by sending again until then
    delay: float = _RETRY_FIRST_S
    retry_at: float | None = None  # when to send again after a refusal "not ready"
    unanswered_s: float = 0.0  # how long the request may go unanswered before it is sent again
    last_seq: int = -1  # of the last event kept
    answered: bool = False  # admitted: an event came from the orchestrator or a worker
    started: bool = False  # a worker runs the job: it is never sent again

    async def send(self, afresh: bool = True) -> None:
        """`afresh`: to a leader that may not know the job (first, or after a new leader),
        which may answer "not ready" for up to `ready_s`; else a retry after such an answer."""
        self.sent_at, self.retry_at = self.clock(), None
        if afresh:
            self.give_up_at, self.delay = self.sent_at + self.ready_s, _RETRY_FIRST_S
        # only `queued` can have come before: a new leader admits and counts afresh
        self.last_seq, self.answered = -1, False
        await self.nc.publish(self.subject, self.data, reply=self.inbox, headers=self.headers)

    async def heard(self, msg: Msg) -> Event | None:
        """The event to hand on, if any (a refusal "not ready" is answered by sending again).
        An event an orchestrator sent in a lead that has passed (a frozen leader woken after a
        takeover, not yet aware) is dropped: the newer leader serves the job, and the stale
        event's seq would hide the newer one's."""
        if (epoch := epoch_of(msg.headers)) and epoch < self.leaders.fence.newest:
            return None
        self.leaders.fence.saw(epoch)
        self.heard_at = self.clock()
        event = None if _no_responders(msg) else _event(msg.data)
        if not self.started and _starting(event):  # not admitted, or ended unstarted: again
            if self.answered:  # it waited, then its orchestrator stopped ("send it again")
                self.give_up_at, self.delay = self.clock() + self.ready_s, _RETRY_FIRST_S
            if self.clock() >= self.give_up_at:
                return event or unavailable(self.subject, self.ready_s)
            # sent again after a pause, or at once if a leader announces itself meanwhile
            self.retry_at, self.delay = self.clock() + self.delay, min(self.delay * 2, _RETRY_MAX_S)
            return None
        return event if event is not None and self.keep(event) else None

    def timeout(self) -> float:
        """Until the stream counts as stalled, or (not started yet) until it is sent again."""
        due = self.heard_at + self.stall_s
        if not self.answered:
            due = min(due, self.sent_at + (self.unanswered_s or self.resend_s))
        elif not self.started:
            due = min(due, self.heard_at + QUEUED_SILENCE_S)
        if self.retry_at is not None:
            due = min(due, self.retry_at)
        return max(due - self.clock(), 0.0)

    def stalled(self) -> bool:
        return self.clock() >= self.heard_at + self.stall_s

    def keep(self, event: Event) -> bool:
        """Whether to hand `event` on (not one delivered before a transparent retry)."""
        self.answered = True
        self.started = self.started or isinstance(event, Started | Token)
        if isinstance(event, End | Error):
            return True  # one per job, never a duplicate, whatever its seq
        if event.seq <= self.last_seq:
            return False
        self.last_seq = event.seq
        return True


async def stream(
    nc: Client,
    request: GenerateRequest,
    subjects: Subjects | None = None,
    stall_s: float = DEFAULT_STALL_S,
    headers: dict[str, str] | None = None,
    ready_s: float = DEFAULT_READY_S,
    resend_s: float = DEFAULT_RESEND_S,
) -> AsyncGenerator[Event, None]:
    """Events of one job, in seq order, ending with exactly one End or Error."""
    subjects = subjects or Subjects()
    if request.job_id is None:  # named here: sending it again must not make a second job
        request = msgspec.structs.replace(request, job_id=new_id("job"))
    inbox = nc.new_inbox()
    queue: asyncio.Queue[Msg | None] = asyncio.Queue()
    sub = await nc.subscribe(inbox, cb=queue.put)
    leaders = await _leaders_of(nc, subjects)
    leaders.waiting.add(queue)
    loop = asyncio.get_running_loop()
    headers = tracing.inject(headers)  # the caller's trace continues in the orchestrator
    data = encode(request)
    asking = _Asking(
        nc, subjects.generate, data, inbox, headers, stall_s, ready_s, resend_s, loop.time, leaders
    )
    try:
        await asking.send()
        asking.heard_at = asking.sent_at
        while True:
            try:
                async with asyncio.timeout(asking.timeout()):
                    msg = await queue.get()
            except TimeoutError:
                if asking.stalled():
                    yield _stall(stall_s, asking.last_seq + 1)
                    return
                # sent again: after a refusal "not ready" (retry_at), no answer at all (lost,
                # or at a frozen leader: waiting longer each time), or a wait gone silent
                if asking.retry_at is None:
                    waited = asking.unanswered_s or resend_s
                    asking.unanswered_s = min(waited * 2, RESEND_MAX_S)
                await asking.send(afresh=asking.retry_at is None)
                continue
            if msg is None:  # a new leader: it may not know a job that has not started
                if not asking.started:
                    asking.unanswered_s = 0.0
                    await asking.send()
                continue
            if (event := await asking.heard(msg)) is not None:
                yield event
                if isinstance(event, End | Error):
                    return
    finally:
        leaders.waiting.discard(queue)
        await sub.unsubscribe()


def _stall(stall_s: float, seq: int) -> Error:
    return Error(
        code=ErrorCode.WORKER_LOST, message=f"no event for {stall_s}s", retriable=True, seq=seq
    )


async def _call(
    nc: Client,
    subject: str,
    message: object,
    decode: Callable[[bytes], T],
    timeout: float,
    ready_s: float = DEFAULT_READY_S,
) -> T | Error:
    """One request/reply, sent again while no orchestrator listens (for up to `ready_s`)."""
    data = encode(message)
    give_up = asyncio.get_running_loop().time() + ready_s
    delay = _RETRY_FIRST_S
    while True:
        try:
            msg = await nc.request(subject, data, timeout=timeout)
        except NoRespondersError:
            if asyncio.get_running_loop().time() >= give_up:
                return unavailable(subject, ready_s)
            delay = await _backoff(delay)
            continue
        return decode(msg.data)


async def state(
    nc: Client,
    subjects: Subjects | None = None,
    timeout: float = 5.0,
    ready_s: float = DEFAULT_READY_S,
) -> ClusterState | Error:
    s = subjects or Subjects()
    return await _call(nc, s.state, StateRequest(), _state, timeout, ready_s)


async def models(
    nc: Client,
    subjects: Subjects | None = None,
    timeout: float = 5.0,
    ready_s: float = DEFAULT_READY_S,
) -> ModelsReply | Error:
    s = subjects or Subjects()
    return await _call(nc, s.models, ModelsRequest(), _models, timeout, ready_s)


async def cancel(
    nc: Client,
    job_id: str,
    subjects: Subjects | None = None,
    timeout: float = 5.0,
    ready_s: float = DEFAULT_READY_S,
) -> CancelReply | Error:
    s = subjects or Subjects()
    return await _call(nc, s.cancel, CancelRequest(job_id=job_id), _cancel, timeout, ready_s)


async def job(
    nc: Client,
    job_id: str,
    subjects: Subjects | None = None,
    timeout: float = 5.0,
    ready_s: float = DEFAULT_READY_S,
) -> JobInfo | Error:
    s = subjects or Subjects()
    return await _call(nc, s.jobs_get, JobGetRequest(job_id=job_id), _job, timeout, ready_s)
