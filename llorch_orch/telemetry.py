"""The orchestrator's spans, metrics and per-job log line, derived in one place (`observe`)
from what the core was fed and what it output (the core itself knows nothing of telemetry).

One job's trace here: `process llorch.v1.api.generate` (CONSUMER, submit to terminal event) with
children `llorch.queue` (time queued, when it was), `send llorch.v1.pool.{pool}.spawn` (CLIENT,
when a worker was started for it) and `send llorch.v1.worker.{worker}.execute` (PRODUCER, one
per dispatch; its context rides on the execute message to the worker's span), and an event
`llorch.pending` on the job's span each time the reasons it waits for change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from llorch_common import tracing
from llorch_common.observe import SECONDS_BUCKETS
from schemas import Queued, Subjects
from schemas.text import clip

from .core import (
    AbandonOnWorker,
    Answered,
    CancelOnWorker,
    Command,
    Core,
    Emit,
    JobEnded,
    Output,
    Pending,
    SendExecute,
    Spawn,
    Stop,
)
from .core import events as ev

log = logging.getLogger("llorch.orch")
tracer = tracing.tracer("llorch.orchestrator")
_meter = metrics.get_meter("llorch.orchestrator")
_jobs = _meter.create_counter("llorch.jobs", "{job}", "Jobs ended, by outcome and error code")
_duration = _meter.create_histogram(
    "llorch.job.duration",
    "s",
    "Admission to terminal event",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_queue_wait = _meter.create_histogram(
    "llorch.queue.wait",
    "s",
    "Admission to first dispatch",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_ttft = _meter.create_histogram(
    "llorch.job.time_to_first_token",
    "s",
    "Admission to the first token (queue + worker)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
_tokens = _meter.create_counter("llorch.tokens.generated", "{token}", "Tokens generated")
_prompt = _meter.create_counter("llorch.tokens.prompt", "{token}", "Prompt tokens processed")
_retries = _meter.create_counter("llorch.retries", "{dispatch}", "Re-dispatches of a job")
_evictions = _meter.create_counter("llorch.evictions", "{worker}", "Workers stopped to make room")
_spawns = _meter.create_counter("llorch.spawns", "{worker}", "Workers the orchestrator started")
_SCRAPE_TIMEOUT_S = 2.0
OTHER = "other"  # the `model` label of a job for a model the orchestrator does not know


@dataclass(slots=True)
class _Job:
    """What the shell remembers of a live job, for its span and metrics."""

    span: trace.Span
    headers: dict[str, str] | None  # the job span's context, for messages about the job
    labels: dict[str, str]  # model, priority
    submitted: float
    position: int | None = None  # first queue position, when it queued
    dispatched: float | None = None  # latest dispatch
    worker_id: str | None = None


@dataclass(frozen=True, slots=True)
class Routed:
    """A command with the trace context its message carries."""

    command: Command
    headers: dict[str, str] | None  # for a message published as is (stream event, execute)
    parent: Context  # for a control request, sent in a CLIENT span of its own


class Telemetry:
    """Observes the core's inputs and outputs in one place (`observe`), nothing else."""

    def __init__(self, core: Core, subjects: Subjects) -> None:
        self.core = core
        self.subjects = subjects
        self.tracing = tracing.enabled()  # hoisted: no per-dispatch span work when off
        self._jobs: dict[str, _Job] = {}

    def observe(self, event: ev.Event | None, outputs: list[Output], now: float) -> list[Routed]:
        """One event's outputs: spans and metrics, and the commands with the trace context to
        send them with. `event` None: commands of the shell's own (a job admission crashed on)."""
        fresh = isinstance(event, ev.Submit) and self._submitted(event)
        routed: list[Routed] = []
        ended: list[JobEnded] = []
        for output in outputs:
            match output:
                case JobEnded(admitted=admitted) if admitted or fresh:
                    ended.append(output)
                case Pending(job_id=job_id, reasons=reasons):
                    self._pending(job_id, reasons)
                case JobEnded() | Answered():
                    pass
                case _:
                    routed.append(self._route(output, now))
        for end in ended:  # after routing: the terminal event still carries the job's context
            self._ended(end, now)
        return routed

    def _route(self, command: Command, now: float) -> Routed:
        match command:
            case Emit(event=Queued(position=position), job_id=job_id):
                job = self._jobs.get(job_id)
                if job is not None and job.position is None:
                    job.position = position
                return Routed(command, self._headers(job_id), Context())
            case Emit(job_id=job_id):
                return Routed(command, self._headers(job_id), Context())
            case SendExecute():
                return Routed(command, self._dispatched(command, now), Context())
            case Spawn(pool_id=pool_id, request=request, job_id=job_id):
                _spawns.add(1, {"model": request.model, "pool": pool_id})
                return Routed(command, None, self.context(job_id))
            case Stop(reason=reason, pool_id=pool_id):
                if reason == "evict":
                    _evictions.add(1, {"pool": pool_id})
                return Routed(command, None, Context())
            case CancelOnWorker(job_id=job_id) | AbandonOnWorker(job_id=job_id):
                return Routed(command, None, self.context(job_id))

    # ---- jobs ----------------------------------------------------------------------------
    def _submitted(self, event: ev.Submit) -> bool:
        """Start the job's span (child of the sender's context). False for a duplicate id: the
        first job keeps its record."""
        request = event.request
        job_id = request.job_id
        if job_id is None or job_id in self._jobs:
            return False
        labels = {"model": self._model_label(request.model), "priority": request.priority}
        subject = event.subject or self.subjects.generate
        name = event.subject_name or subject
        attrs = tracing.messaging(
            "process",
            subject,
            name,
            **{
                tracing.JOB_ID: job_id,
                tracing.CONVERSATION_ID: job_id,
                tracing.MODEL: request.model,
                tracing.PRIORITY: request.priority,
            },
        )
        span = tracer.start_span(
            tracing.span_name("process", name),
            tracing.extract(event.trace),
            kind=tracing.CONSUMER,
            attributes=attrs,
            start_time=int(event.now * 1e9),
        )
        carried = tracing.inject(None, trace.set_span_in_context(span))
        self._jobs[job_id] = _Job(span, carried, labels, event.now)
        return True

    def _model_label(self, model: str) -> str:
        """A label value only for a model of the catalog (a live pool's, or configured): a
        client's made-up names would each add series kept for the process's life."""
        return model if self.core.knows_model(model) else OTHER

    def _pending(self, job_id: str, reasons: tuple[str, ...]) -> None:
        job = self._jobs.get(job_id)
        if job is not None and self.tracing:
            job.span.add_event("llorch.pending", {tracing.REASONS: list(reasons)})

    def _headers(self, job_id: str | None) -> dict[str, str] | None:
        job = self._jobs.get(job_id) if job_id else None
        return job.headers if job else None

    def context(self, job_id: str | None) -> Context:
        """The job's span as the parent of a request sent about it."""
        job = self._jobs.get(job_id) if job_id else None
        return trace.set_span_in_context(job.span) if job else Context()

    def _dispatched(self, command: SendExecute, now: float) -> dict[str, str] | None:
        """A dispatch: metrics, and the PRODUCER span whose context the execute carries."""
        job_id = command.execute.job_id
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.dispatched is None:
            _queue_wait.record(now - job.submitted, job.labels)
            if job.position is not None and self.tracing:
                start = int(job.submitted * 1e9)
                queued = tracer.start_span("llorch.queue", self.context(job_id), start_time=start)
                queued.set_attribute(tracing.QUEUE_POSITION, job.position)
                queued.end(int(now * 1e9))
        elif command.attempt > 1:
            _retries.add(1, job.labels)
        job.dispatched, job.worker_id = now, command.worker_id
        if not self.tracing:
            return job.headers
        subject = self.subjects.execute(command.worker_id)
        name = tracing.template(subject, worker=command.worker_id)
        ids = {
            tracing.JOB_ID: job_id,
            tracing.WORKER_ID: command.worker_id,
            tracing.ATTEMPT: command.attempt,
            tracing.CONVERSATION_ID: job_id,
        }
        attrs = tracing.messaging("send", subject, name, **ids)
        parent = tracing.extract(job.headers)
        span = tracer.start_span(
            tracing.span_name("send", name), parent, kind=tracing.PRODUCER, attributes=attrs
        )
        span.end()
        return tracing.inject(None, trace.set_span_in_context(span))

    def _ended(self, ended: JobEnded, now: float) -> None:
        job_id, end = ended.job_id, ended.info
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        outcome = end.state if ended.admitted else "rejected"
        code = end.code
        _jobs.add(1, {**job.labels, "outcome": outcome, "code": code or ""})
        _duration.record(now - job.submitted, {**job.labels, "outcome": outcome})
        attrs: dict[str, Any] = {tracing.OUTCOME: outcome}
        if end.tokens_out is not None:
            _tokens.add(end.tokens_out, {"model": job.labels["model"]})
            _prompt.add(end.tokens_in or 0, {"model": job.labels["model"]})
            attrs |= {tracing.TOKENS_IN: end.tokens_in or 0, tracing.TOKENS_OUT: end.tokens_out}
            if end.ttft_ms is not None and job.dispatched is not None:
                _ttft.record(job.dispatched - job.submitted + end.ttft_ms / 1000, job.labels)
        self._close_span(job, job_id, attrs, code, now)

    def _close_span(
        self, job: _Job, job_id: str, attrs: dict[str, Any], code: str | None, now: float
    ) -> None:
        span = job.span
        if job.worker_id is not None:
            attrs[tracing.WORKER_ID] = job.worker_id
        if code:
            attrs[tracing.ERROR_CODE] = code
            span.set_status(trace.StatusCode.ERROR, code)
        span.set_attributes(attrs)
        span.end(int(now * 1e9))
        ctx = span.get_span_context()
        ids = {"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"}
        extra = {"job_id": job_id, "worker_id": job.worker_id, "model": job.labels["model"]}
        if ctx.is_valid:
            extra |= ids
        suffix = f" {code}" if code else ""
        log.info("job %s %s%s", clip(job_id), attrs[tracing.OUTCOME], suffix, extra=extra)

    # ---- gauges ----------------------------------------------------------------------------
    def gauges(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make this the core the gauges read, on its own loop (a scrape runs on the
        exporter's thread). The instruments are made once per process: a later lead of the
        same process (serve.py) only points them at its own core."""
        _gauged[:] = [(self, loop)]
        if not _instruments_made:
            _instruments_made.append(True)
            _meter.create_observable_gauge(
                "llorch.queue.depth", [_on_loop(Telemetry._queue_depth)], "{job}", "Jobs waiting"
            )
            _meter.create_observable_gauge(
                "llorch.workers",
                [_on_loop(Telemetry._workers)],
                "{worker}",
                "Workers by phase and model",
            )

    def retire(self) -> None:
        """Our lead ended: the gauges report nothing until the next lead."""
        if _gauged and _gauged[0][0] is self:
            _gauged.clear()

    def _queue_depth(self) -> list[Observation]:
        waiting = self.core.waiting_count
        return [Observation(waiting(p), {"priority": p}) for p in ("interactive", "batch")]

    def _workers(self) -> list[Observation]:
        counts = self.core.worker_counts()
        return [
            Observation(n, {"state": state, "model": model, "pool": pool})
            for (state, model, pool), n in counts.items()
        ]


_gauged: list[tuple[Telemetry, asyncio.AbstractEventLoop]] = []  # the leading core's, if any
_instruments_made: list[bool] = []


def _on_loop(read: Callable[[Telemetry], list[Observation]]) -> Callable[..., list[Observation]]:
    def callback(_: CallbackOptions) -> list[Observation]:
        if not _gauged:
            return []
        telemetry, loop = _gauged[0]
        future: concurrent.futures.Future[list[Observation]] = concurrent.futures.Future()
        loop.call_soon_threadsafe(lambda: future.set_result(read(telemetry)))
        return future.result(_SCRAPE_TIMEOUT_S)

    return callback
