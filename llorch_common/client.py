"""A small NATS client for llorch's API: what the CLI, the HTTP edge, tests and
benchmarks use.

Any NATS client can do the same with plain JSON; this one adds seq de-duplication, the
stall rule (a stream that is silent for `stall_s` is reported as lost, never a hang) and the
start-up rule: while no orchestrator listens (NATS answers "no responders") or the one that
does has heard from no pool yet (UNAVAILABLE), a generate request is sent again for up to
`ready_s`, then reported as UNAVAILABLE, retriable. It was not admitted, so sending it again is
safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llorch_common import tracing
from llorch_common.connect import Credentials
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
    StateRequest,
    Subjects,
    decoder,
    encode,
)

_event = decoder(Event)
_state = decoder(ClusterState | Error)
_models = decoder(ModelsReply | Error)
_cancel = decoder(CancelReply | Error)
_job = decoder(JobInfo | Error)

T = TypeVar("T")

DEFAULT_STALL_S = 60.0
DEFAULT_READY_S = 10.0  # a stack that is still starting gets this long to start answering
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


async def connect(url: str, credentials: Credentials | None = None, **options: Any) -> Client:
    """A connection as `credentials`: its replies and streams come under the identity's own
    inbox prefix (`_INBOX.<user or nkey>`), the only one the server lets it read."""
    creds = (credentials or Credentials()).connect_options()
    return await nats.connect(servers(url), **options, **creds)


async def stream(
    nc: Client,
    request: GenerateRequest,
    subjects: Subjects | None = None,
    stall_s: float = DEFAULT_STALL_S,
    headers: dict[str, str] | None = None,
    ready_s: float = DEFAULT_READY_S,
) -> AsyncGenerator[Event, None]:
    """Events of one job, in seq order, ending with exactly one End or Error."""
    subjects = subjects or Subjects()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        headers = tracing.inject(headers)  # the caller's trace continues in the orchestrator
        send = encode(request)
        await nc.publish(subjects.generate, send, reply=inbox, headers=headers)
        loop = asyncio.get_running_loop()
        give_up, delay = loop.time() + ready_s, _RETRY_FIRST_S
        last_seq = -1
        while True:
            try:
                msg = await sub.next_msg(timeout=stall_s)
            except NatsTimeout:
                yield Error(
                    code=ErrorCode.WORKER_LOST,
                    message=f"no event for {stall_s}s",
                    retriable=True,
                    seq=last_seq + 1,
                )
                return
            event = None if _no_responders(msg) else _event(msg.data)
            if last_seq < 0 and _starting(event):  # refused, not admitted: safe to send again
                if loop.time() >= give_up:
                    yield event or unavailable(subjects.generate, ready_s)
                    return
                delay = await _backoff(delay)
                await nc.publish(subjects.generate, send, reply=inbox, headers=headers)
                continue
            if event is None:
                continue
            if isinstance(event, End | Error):
                yield event  # one per job, never a duplicate, whatever its seq
                return
            if event.seq <= last_seq:
                continue  # already delivered before a transparent retry
            last_seq = event.seq
            yield event
    finally:
        await sub.unsubscribe()


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
