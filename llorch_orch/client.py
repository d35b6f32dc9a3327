"""A small NATS client for llorch's API: what the CLI, tests and benchmarks use.

Any NATS client can do the same with plain JSON; this one adds seq de-duplication and the
stall rule: a stream that is silent for `stall_s` is reported as lost, never a hang.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import nats
from nats.aio.client import Client
from nats.errors import TimeoutError as NatsTimeout

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
    tracing,
)
from schemas.connect import Credentials

_event = decoder(Event)
_state = decoder(ClusterState | Error)
_models = decoder(ModelsReply | Error)
_cancel = decoder(CancelReply | Error)
_job = decoder(JobInfo | Error)

DEFAULT_STALL_S = 60.0


async def connect(url: str, credentials: Credentials | None = None, **options: Any) -> Client:
    """A connection as `credentials`: its replies and streams come under the identity's own
    inbox prefix (`_INBOX.<user or nkey>`), the only one the server lets it read."""
    return await nats.connect(url, **options, **(credentials or Credentials()).connect_options())


async def stream(
    nc: Client,
    request: GenerateRequest,
    subjects: Subjects | None = None,
    stall_s: float = DEFAULT_STALL_S,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[Event]:
    """Events of one job, in seq order, ending with exactly one End or Error."""
    subjects = subjects or Subjects()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    try:
        headers = tracing.inject(headers)  # the caller's trace continues in the orchestrator
        await nc.publish(subjects.generate, encode(request), reply=inbox, headers=headers)
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
            event = _event(msg.data)
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
    nc: Client, subject: str, message: object, decode: object, timeout: float
) -> object:
    msg = await nc.request(subject, encode(message), timeout=timeout)
    return decode(msg.data)  # type: ignore[operator]


async def state(
    nc: Client, subjects: Subjects | None = None, timeout: float = 5.0
) -> ClusterState | Error:
    s = subjects or Subjects()
    return await _call(nc, s.state, StateRequest(), _state, timeout)  # type: ignore[return-value]


async def models(
    nc: Client, subjects: Subjects | None = None, timeout: float = 5.0
) -> ModelsReply | Error:
    s = subjects or Subjects()
    return await _call(nc, s.models, ModelsRequest(), _models, timeout)  # type: ignore[return-value]


async def cancel(
    nc: Client, job_id: str, subjects: Subjects | None = None, timeout: float = 5.0
) -> CancelReply | Error:
    s = subjects or Subjects()
    return await _call(nc, s.cancel, CancelRequest(job_id=job_id), _cancel, timeout)  # type: ignore[return-value]


async def job(
    nc: Client, job_id: str, subjects: Subjects | None = None, timeout: float = 5.0
) -> JobInfo | Error:
    s = subjects or Subjects()
    return await _call(nc, s.jobs_get, JobGetRequest(job_id=job_id), _job, timeout)  # type: ignore[return-value]
