"""One running job: engine items in, stream events and job statuses out (the thin NATS shell)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Literal

from nats.aio.client import Client
from opentelemetry import trace

from llorch_common import tracing
from llorch_worker import telemetry
from llorch_worker.engine import Engine
from llorch_worker.jobstate import JobState
from llorch_worker.outcome import Failed, Finished, Item, Outcome
from schemas import (
    End,
    Error,
    ErrorCode,
    Execute,
    JobStatus,
    Started,
    Subjects,
    Token,
    encode,
)

StatusState = Literal["started", "progress", "finished", "failed", "abandoned"]
_DIVERGED = (
    "the regenerated text differs from what the client already has (its hash at seq {seq}): "
    "the retry cannot continue the stream"
)


@dataclass(frozen=True, slots=True)
class JobContext:
    """What every job of this worker shares."""

    nc: Client
    engine: Engine
    subjects: Subjects
    worker_id: str
    progress_interval: float
    probe_prefix: str  # private inbox prefix; the job's probe replies go to `<prefix>.<job_id>`


class EngineInbox:
    """Engine thread -> event loop: items wait in a deque and the loop is woken at most once
    per batch: when it falls behind (a fast GPU), it takes the tokens that piled up at once
    (each still its own event: an event's seq must name the same text on every run)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._items: deque[Item] = deque()
        self._wake = asyncio.Event()
        self._scheduled = False  # a wake-up is on its way (set by the engine, reset by the loop)

    def put(self, item: Item) -> None:
        """Engine thread."""
        self._items.append(item)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon_threadsafe(self._wake.set)

    async def take(self) -> tuple[list[str], Outcome | None]:
        """Event loop: the texts delivered so far, and the outcome once the engine is done."""
        await self._wake.wait()
        self._wake.clear()
        self._scheduled = False  # before draining: an item put from now on wakes us again
        texts: list[str] = []
        while self._items:
            item = self._items.popleft()
            if not isinstance(item, str):
                return texts, item  # the outcome is always the engine's last item
            texts.append(item)
        return texts, None


class Job:
    def __init__(
        self, ctx: JobContext, execute: Execute, prompt: list[int], span: trace.Span
    ) -> None:
        self.ctx = ctx
        self.execute = execute
        self._prompt = prompt  # its tokens, from Engine.prepare
        self.job_id = execute.job_id
        self.span = span  # the job's `execute` span, ended with the job
        # computed once: every event and status of the job carries the execute span's context
        self.headers = tracing.inject(None, trace.set_span_in_context(span))
        self._started_ns = time.time_ns()  # unix time of `started_at`, for span timestamps
        self._state = JobState(execute, ctx.progress_interval, started_at=time.monotonic())
        self._cancel = threading.Event()
        self._cancel_reason = ""
        self._cancel_code = ErrorCode.CANCELLED
        self._cancel_retriable = False
        self._abandoned = False  # stop publishing on the stream at once; no terminal event
        self._last_sent: int | None = None  # seq of the last event handed to NATS
        self.ended = False  # the engine is done: a cancel now would come too late
        self.final: JobStatus | None = None  # the last status published, once `done` is set
        self.done = asyncio.Event()
        self._status_subject = ctx.subjects.job_status(execute.job_id)
        self._probe_reply = f"{ctx.probe_prefix}.{execute.job_id}"

    def cancel(
        self, reason: str, code: ErrorCode = ErrorCode.CANCELLED, retriable: bool = False
    ) -> None:
        """Idempotent (the first reason wins); the engine stops at its next token and the job
        ends with an error of `code`."""
        if not self._cancel.is_set():
            self._cancel_reason = reason
            self._cancel_code = code
            self._cancel_retriable = retriable
            self._cancel.set()

    def abandon(self, code: ErrorCode) -> None:
        """Stop now and publish nothing more on the stream, not even a terminal event: the
        orchestrator finishes the job elsewhere. Only a final `abandoned` status (with `code`
        and the last seq published) goes out. Wins over a cancel already asked."""
        if not self.ended:
            self._abandoned = True
            self._cancel_code = code
            self._cancel.set()

    async def run(self) -> None:
        try:
            await self._run()
        except Exception as exc:
            self.span.record_exception(exc)
            self.span.end()
            raise
        finally:
            self.done.set()

    async def _run(self) -> None:
        inbox = EngineInbox(asyncio.get_running_loop())
        self.ctx.engine.start(self.execute, self._prompt, self._cancel, inbox.put)
        e = self.execute
        seq, visible = self._take()
        if visible:
            started = Started(
                seq=seq, job_id=e.job_id, worker_id=self.ctx.worker_id, model=e.model, seed=e.seed
            )
            await self._publish(started)
        await self._status("started", seq)
        while True:
            texts, outcome = await inbox.take()
            if texts:
                await self._on_tokens(texts)
            if outcome is not None:
                break
        self.ended = True
        if self._abandoned:
            await self._abandon_status(outcome)
        else:
            await self._finish(outcome)

    async def _abandon_status(self, outcome: Outcome) -> None:
        # where the client's stream stands: the last event out, or all it had before this run
        seq = self.execute.resume_after if self._last_sent is None else self._last_sent
        await self._status("abandoned", seq, outcome.tokens_in, self._cancel_code)
        self._record(self._cancel_code, outcome.tokens_in)

    async def _on_tokens(self, texts: list[str]) -> None:
        """Tokens the engine made since the last wake-up, one `token` event each (never joined
        by timing): an event's seq then names the same text on every run of the job, so a
        retry's events splice into the client's stream exactly where its seqs say."""
        now = time.monotonic()
        for text in texts:  # "" while text is held back (partial UTF-8 or stop match)
            self._state.token_generated(now)
            if text and not self._cancel.is_set():  # once cancelled, only the terminal goes out
                seq, visible = self._take(text)
                if visible:
                    await self._publish(Token(seq=seq, text=text), now)
        progress_seq = self._state.progress_due(now)
        if progress_seq is not None:
            await self._status("progress", progress_seq)

    def _take(self, text: str = "") -> tuple[int, bool]:
        """The next event's seq and whether it is published; a retry whose regenerated text
        differs from the client's is cancelled with a retriable WORKER_LOST."""
        seq, visible = self._state.take_seq(text)
        if self._state.diverged:
            at = self.execute.resume_after
            self.cancel(_DIVERGED.format(seq=at), ErrorCode.WORKER_LOST, retriable=True)
        return seq, visible

    async def _finish(self, outcome: Outcome) -> None:
        if isinstance(outcome, Finished) and outcome.tail and outcome.reason != "cancelled":
            seq, visible = self._take(outcome.tail)
            if visible:
                await self._publish(Token(seq=seq, text=outcome.tail))
        if isinstance(outcome, Finished) and (self._state.diverged or self._state.ended_short()):
            at = self.execute.resume_after
            self.cancel(_DIVERGED.format(seq=at), ErrorCode.WORKER_LOST, retriable=True)
            outcome = Finished("cancelled", outcome.tokens_in, "")
        seq, visible = self._state.take_seq()
        terminal, code = self._terminal(outcome, seq)
        if visible:
            await self._publish(terminal)
        tokens_in = outcome.tokens_in
        if code is None:
            await self._status("finished", seq, tokens_in)
        else:
            await self._status("failed", seq, tokens_in, code)
        self._record(code, tokens_in)

    def _first_token_ms(self) -> float | None:
        s = self._state
        return None if s.first_token_at is None else (s.first_token_at - s.started_at) * 1000.0

    def _record(self, code: ErrorCode | None, tokens_in: int) -> None:
        start, ttft_ms = self._started_ns, self._first_token_ms()
        first = None if ttft_ms is None else start + int(ttft_ms * 1e6)
        outcome = "finished" if code is None else "failed"
        if code == ErrorCode.CANCELLED:
            outcome = "cancelled"
        times = (start, first, time.time_ns())
        counts = (tokens_in, self._state.tokens_out)
        telemetry.job_ended(self.span, self.execute.model, outcome, code, counts, times)

    def _terminal(self, outcome: Outcome, seq: int) -> tuple[End | Error, ErrorCode | None]:
        now = time.monotonic()
        job_id = self.job_id
        match outcome:
            case Finished(reason="cancelled"):
                code = self._cancel_code
                error = Error(
                    code=code,
                    message=self._cancel_reason,
                    retriable=self._cancel_retriable,
                    seq=seq,
                    job_id=job_id,
                )
                return error, code
            case Finished(reason="stop" | "length" as reason, tokens_in=tokens_in):
                end = End(
                    seq=seq,
                    job_id=job_id,
                    finish_reason=reason,
                    tokens_in=tokens_in,
                    tokens_out=self._state.tokens_out,
                    ttft_ms=self._state.ttft_ms(now),
                    total_ms=self._state.elapsed_ms(now),
                )
                return end, None
            case Failed(code=code, message=message):
                return Error(code=code, message=message, seq=seq, job_id=job_id), code
        raise AssertionError(f"unknown outcome {outcome!r}")

    async def _publish(
        self, event: Started | Token | End | Error, now: float | None = None
    ) -> None:
        """Publish to the client; now and then with a reply subject, as a probe: the server
        answers a message nobody subscribes to with no-responders (see Worker._on_probe_reply).
        Nothing once the job is abandoned: its stream belongs to its next run."""
        if self._abandoned:
            return
        self._last_sent = event.seq  # handed over below, before any await: it goes out
        probe = self._state.probe_due(time.monotonic() if now is None else now)
        await self.ctx.nc.publish(
            self.execute.stream,
            encode(event),
            reply=self._probe_reply if probe else "",
            headers=self.headers,
        )

    async def _status(
        self,
        state: StatusState,
        seq: int,
        tokens_in: int = 0,
        code: ErrorCode | None = None,
    ) -> None:
        status = JobStatus(
            job_id=self.job_id,
            worker_id=self.ctx.worker_id,
            state=state,
            seq=seq,
            tokens_in=tokens_in,
            tokens_out=self._state.tokens_out,
            code=code,
            ttft_ms=self._first_token_ms() if state in ("finished", "failed") else None,
            hash=self._state.hash,
        )
        self.final = status
        await self.ctx.nc.publish(self._status_subject, encode(status), headers=self.headers)
