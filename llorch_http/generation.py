"""One job on behalf of one HTTP request: its events from NATS, and its cancellation when
the HTTP client leaves before the end (the edge keeps nothing once the request is over)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Coroutine
from typing import Any

from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.errors import MaxPayloadError
from starlette.types import Receive

from llorch_common import client
from schemas import End, Error, ErrorCode, Event, GenerateRequest, Queued, Started, Subjects

from .errors import ApiError

log = logging.getLogger("llorch.http")

# Clean-ups still in flight: a task nobody references may be collected mid-way.
_running: set[asyncio.Task[Any]] = set()


def _background(work: Coroutine[Any, Any, Any]) -> None:
    task = asyncio.create_task(work)
    _running.add(task)
    task.add_done_callback(_running.discard)


class Job:
    """The events of one job, `queued` and `started` left out (HTTP has nothing to say about
    them). Leaving before the terminal event (`close`) cancels the job."""

    def __init__(self, nc: Client, subjects: Subjects, request: GenerateRequest) -> None:
        assert request.job_id is not None  # chosen by the edge: cancellable before `started`
        self.job_id = request.job_id
        self._nc, self._subjects = nc, subjects
        self._events: AsyncGenerator[Event, None] = client.stream(nc, request, subjects)
        self.ended = False
        self._closed = False

    async def next(self) -> Event:
        """The next token, or the terminal End or Error."""
        try:
            async for event in self._events:
                if isinstance(event, Queued | Started):
                    continue
                self.ended = isinstance(event, End | Error)
                return event
        except MaxPayloadError:  # the body was under the HTTP limit, but its request is not
            self.ended = True  # it was never sent: nothing to cancel
            raise ApiError(
                413,
                f"the request is over the bus's {self._nc.max_payload}-byte message limit",
                "payload_too_large",
            ) from None
        raise AssertionError("a job's stream ends with End or Error")  # client.stream's rule

    def close(self) -> None:
        """Stop listening; a job not yet ended is cancelled. Both in the background: this
        runs where the request is being cancelled (its client left), and there any await
        would be cancelled in turn, nor should a request wait for the orchestrator's answer."""
        if self._closed:
            return
        self._closed = True
        _background(self._events.aclose())
        if not self.ended:
            self.ended = True
            _background(self._cancel())

    async def _cancel(self) -> None:
        try:
            reply = await client.cancel(self._nc, self.job_id, self._subjects, ready_s=0)
        except (NatsError, TimeoutError) as exc:  # NATS gone: the job's deadline still ends it
            log.warning("cancelling %s: %r", self.job_id, exc)
            return
        if isinstance(reply, Error) and reply.code != ErrorCode.NOT_FOUND:  # ended already
            log.warning("cancelling %s: %s", self.job_id, reply.message)


class Leaving:
    """The HTTP client's disconnect, watched for the rest of a request once its body is read
    (from then on `receive` only waits for it), as the cancellation of the request's own task.

    One watcher per request, and the request's task runs the job's events and the response
    itself: no task per awaited event stands between a token and its bytes."""

    def __init__(self, receive: Receive) -> None:
        self.left = False
        self._armed = True
        self._task = asyncio.current_task()
        self._watch = asyncio.ensure_future(_disconnect(receive))
        self._watch.add_done_callback(self._on_disconnect)

    def _on_disconnect(self, watch: asyncio.Future[None]) -> None:
        # Once stopped, a late disconnect must not cancel what the task does next; a failed
        # `receive` says nothing about the client.
        if watch.cancelled() or watch.exception() is not None or not self._armed:
            return
        if self._task is not None:
            self.left = True
            self._task.cancel()

    def forgive(self, exc: asyncio.CancelledError) -> None:
        """Returns when `exc` came from the client leaving (the task goes on to clean up),
        else raises it again: the server stopping cancels requests too."""
        if not self.left:
            raise exc
        assert self._task is not None
        self._task.uncancel()

    def stop(self) -> None:
        self._armed = False
        self._watch.cancel()


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
