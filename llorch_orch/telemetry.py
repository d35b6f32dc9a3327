"""The orchestrator's spans, metrics and per-job log line, derived in the shell from what the
core was fed and what it commanded (the core itself knows nothing of telemetry).

One job's trace here: `process llorch.v1.api.generate` (CONSUMER, submit to terminal event) with
children `llorch.queue` (time queued, when it was), `send llorch.v1.pool.{pool}.spawn` (CLIENT,
when a worker was started for it) and `send llorch.v1.worker.{worker}.execute` (PRODUCER, one
per dispatch; its context rides on the execute message to the worker's span).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation

from llorch_common import tracing
from llorch_common.observe import SECONDS_BUCKETS
from schemas import Error, GenerateRequest, JobStatus, Queued
from schemas.text import clip

from .core import Command, Core, Emit, SendExecute, Spawn, Stop
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
    status: JobStatus | None = None  # the terminal one, from the worker


class Telemetry:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.tracing = tracing.enabled()  # hoisted: no per-dispatch span work when off
        self._jobs: dict[str, _Job] = {}

    # ---- jobs ----------------------------------------------------------------------------
    def submitted(
        self,
        request: GenerateRequest,
        subject: str,
        headers: dict[str, str] | None,
        now: float,
        ids: dict[str, str],
    ) -> dict[str, str] | None:
        """Start the job's span (child of the sender's context); returns the trace headers to
        carry onward. `request.job_id` is set. A duplicate id keeps the first job's record."""
        job_id = request.job_id
        assert job_id is not None
        labels = {"model": self._model_label(request.model), "priority": request.priority}
        name = tracing.template(subject, **ids)
        span = tracer.start_span(
            tracing.span_name("process", name),
            tracing.extract(headers),
            kind=tracing.CONSUMER,
            attributes=tracing.messaging(
                "process", subject, name,
                **{tracing.JOB_ID: job_id, tracing.CONVERSATION_ID: job_id,
                   tracing.MODEL: request.model, tracing.PRIORITY: request.priority},
            ),
            start_time=int(now * 1e9),
        )  # fmt: skip
        carried = tracing.inject(None, trace.set_span_in_context(span))
        if job_id in self._jobs:
            span.end()
            return carried
        self._jobs[job_id] = _Job(span, carried, labels, now)
        return carried

    def _model_label(self, model: str) -> str:
        """A label value only for a model of the catalog (a live pool's, or configured): a
        client's made-up names would each add series kept for the process's life."""
        core = self.core
        known = core.view.model_info(model) is not None or model in core.cfg.models
        return model if known else OTHER

    def status(self, status: JobStatus) -> None:
        job = self._jobs.get(status.job_id)
        if job is not None and status.state in ("finished", "failed"):
            job.status = status

    def headers(self, job_id: str | None) -> dict[str, str] | None:
        job = self._jobs.get(job_id) if job_id else None
        return job.headers if job else None

    def context(self, job_id: str | None) -> Context:
        job = self._jobs.get(job_id) if job_id else None
        return trace.set_span_in_context(job.span) if job else Context()

    def dispatched(self, command: SendExecute, subject: str, now: float) -> dict[str, str] | None:
        """A dispatch: metrics, and the PRODUCER span whose context the execute carries."""
        job = self._jobs.get(command.execute.job_id)
        if job is None:
            return command.trace
        if job.dispatched is None:
            _queue_wait.record(now - job.submitted, job.labels)
            if job.position is not None and self.tracing:
                queued = tracer.start_span("llorch.queue", self.context(command.execute.job_id),
                                           start_time=int(job.submitted * 1e9))  # fmt: skip
                queued.set_attribute(tracing.QUEUE_POSITION, job.position)
                queued.end(int(now * 1e9))
        elif command.attempt > 1:
            _retries.add(1, job.labels)
        job.dispatched, job.worker_id = now, command.worker_id
        if not self.tracing:
            return command.trace
        name = tracing.template(subject, worker=command.worker_id)
        attrs = tracing.messaging("send", subject, name, **{
            tracing.JOB_ID: command.execute.job_id, tracing.WORKER_ID: command.worker_id,
            tracing.ATTEMPT: command.attempt, tracing.CONVERSATION_ID: command.execute.job_id,
        })  # fmt: skip
        span = tracer.start_span(tracing.span_name("send", name), tracing.extract(command.trace),
                                 kind=tracing.PRODUCER, attributes=attrs)  # fmt: skip
        span.end()
        return tracing.inject(None, trace.set_span_in_context(span))

    def carried_out(self, commands: Iterable[Command], event: ev.Event | None, now: float) -> None:
        """After a batch of commands: count them, and close the jobs that ended."""
        ended: dict[str, Error | None] = {}
        if isinstance(event, ev.StatusSeen) and event.status.state in ("finished", "failed"):
            ended[event.status.job_id] = None
        for command in commands:
            match command:
                case Emit(event=Queued(position=position), job_id=job_id):
                    job = self._jobs.get(job_id)
                    if job is not None and job.position is None:
                        job.position = position
                case Emit(event=Error() as error, job_id=job_id):
                    ended[job_id] = error
                case Spawn(pool_id=pool_id, request=request):
                    _spawns.add(1, {"model": request.model, "pool": pool_id})
                case Stop(reason="evict", pool_id=pool_id):
                    _evictions.add(1, {"pool": pool_id})
        for job_id, error in ended.items():
            if job_id not in self.core.jobs:
                self._ended(job_id, error, now)

    def _ended(self, job_id: str, error: Error | None, now: float) -> None:
        job = self._jobs.pop(job_id, None)
        if job is None:
            return
        info = self.core.finished.get(job_id)
        outcome = info.state if info is not None else "rejected"
        code = (info.code if info is not None else None) or (error.code if error else None)
        _jobs.add(1, {**job.labels, "outcome": outcome, "code": code or ""})
        _duration.record(now - job.submitted, {**job.labels, "outcome": outcome})
        attrs: dict[str, Any] = {tracing.OUTCOME: outcome}
        status = job.status
        if status is not None:
            _tokens.add(status.tokens_out, {"model": job.labels["model"]})
            _prompt.add(status.tokens_in, {"model": job.labels["model"]})
            attrs |= {tracing.TOKENS_IN: status.tokens_in, tracing.TOKENS_OUT: status.tokens_out}
            if status.ttft_ms is not None and job.dispatched is not None:
                ttft = job.dispatched - job.submitted + status.ttft_ms / 1000
                _ttft.record(ttft, job.labels)
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
        log.info("job %s %s%s", clip(job_id), attrs[tracing.OUTCOME], f" {code}" if code else "",
                 extra=extra)  # fmt: skip

    # ---- gauges ----------------------------------------------------------------------------
    def observe(self, loop: asyncio.AbstractEventLoop) -> None:
        """Gauges read the core on its own loop: a scrape runs on the exporter's thread."""

        def on_loop(read: Callable[[], list[Observation]]) -> Callable[..., list[Observation]]:
            def callback(_: CallbackOptions) -> list[Observation]:
                future: concurrent.futures.Future[list[Observation]] = concurrent.futures.Future()
                loop.call_soon_threadsafe(lambda: future.set_result(read()))
                return future.result(_SCRAPE_TIMEOUT_S)

            return callback

        _meter.create_observable_gauge(
            "llorch.queue.depth", [on_loop(self._queue_depth)], "{job}", "Jobs waiting"
        )
        _meter.create_observable_gauge(
            "llorch.workers", [on_loop(self._workers)], "{worker}", "Workers by phase and model"
        )

    def _queue_depth(self) -> list[Observation]:
        queue = self.core.queue
        return [Observation(queue.count(p), {"priority": p}) for p in ("interactive", "batch")]

    def _workers(self) -> list[Observation]:
        counts: dict[tuple[str, str, str], int] = {}
        for w in self.core.view.workers.values():
            key = (w.phase, w.model, w.pool_id)
            counts[key] = counts.get(key, 0) + 1
        return [
            Observation(n, {"state": state, "model": model, "pool": pool})
            for (state, model, pool), n in counts.items()
        ]
