"""The worker's spans and metrics: one `execute` span per job (prefill and decode as child spans
built from timestamps at the end, never a span or a call per token) and one `load` span.

Metrics of a worker are pushed over OTLP (`OTEL_METRICS_EXPORTER=otlp`): workers come and go,
so nobody scrapes them; the orchestrator and the pool expose the cluster's figures for
Prometheus (docs/observability.md).
"""

from __future__ import annotations

import os

from opentelemetry import metrics, trace
from opentelemetry.context import Context

from llorch_common import tracing
from llorch_common.observe import SECONDS_BUCKETS

tracer = tracing.tracer("llorch.worker")
_meter = metrics.get_meter("llorch.worker")
jobs = _meter.create_counter("llorch.worker.jobs", "{job}", "Jobs run, by model and outcome")
tokens = _meter.create_counter("llorch.worker.tokens", "{token}", "Tokens generated")
ttft = _meter.create_histogram(
    "llorch.worker.time_to_first_token",
    "s",
    "Job start on the worker to its first token",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
duration = _meter.create_histogram(
    "llorch.worker.job.duration",
    "s",
    "Job start to end",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
load = _meter.create_histogram(
    "llorch.worker.load.duration",
    "s",
    "Model load time",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)


def spawn_parent() -> Context:
    """The spawn that started this process: the pool hands it over in `TRACEPARENT` (the
    environment-variable carrier of the OpenTelemetry spec)."""
    carrier = {
        k: os.environ[k.upper()] for k in ("traceparent", "tracestate") if k.upper() in os.environ
    }
    return tracing.extract(carrier)


def load_span(worker_id: str, model: str, device: int) -> trace.Span:
    attrs: dict[str, str | int] = {
        tracing.WORKER_ID: worker_id,
        tracing.MODEL: model,
        tracing.DEVICE: device,
    }
    return tracer.start_span("llorch.worker.load", spawn_parent(), attributes=attrs)


def execute_span(subject: str, headers: dict[str, str] | None, **attrs: object) -> trace.Span:
    name = tracing.template(subject, worker=str(attrs.get(tracing.WORKER_ID, "")))
    return tracer.start_span(
        tracing.span_name("process", name),
        tracing.extract(headers),
        kind=tracing.CONSUMER,
        attributes=tracing.messaging("process", subject, name, **attrs),
    )


def job_ended(
    span: trace.Span,
    model: str,
    outcome: str,
    code: str | None,
    counts: tuple[int, int],
    times_ns: tuple[int, int | None, int],
) -> None:
    """Record a finished job. `counts` = (tokens_in, tokens_out); `times_ns` = (start, first
    token or None, end) in unix ns."""
    tokens_in, tokens_out = counts
    start, first, end = times_ns
    labels = {"model": model}
    jobs.add(1, {**labels, "outcome": outcome, "code": code or ""})
    tokens.add(tokens_out, labels)
    duration.record((end - start) / 1e9, labels)
    if first is not None:
        ttft.record((first - start) / 1e9, labels)
    if not span.is_recording():
        return
    span.set_attributes(
        {tracing.TOKENS_IN: tokens_in, tracing.TOKENS_OUT: tokens_out, tracing.OUTCOME: outcome}
    )
    if code:
        span.set_attribute(tracing.ERROR_CODE, code)
        span.set_status(trace.StatusCode.ERROR, code)
    ctx = trace.set_span_in_context(span)
    split = first if first is not None else end
    prefill = tracer.start_span(
        "llorch.prefill", ctx, start_time=start, attributes={tracing.TOKENS_IN: tokens_in}
    )
    prefill.end(split)
    if first is not None:
        span.set_attribute(tracing.TTFT_MS, (first - start) / 1e6)
        span.add_event("first_token", timestamp=first)
        decode = tracer.start_span(
            "llorch.decode", ctx, start_time=first, attributes={tracing.TOKENS_OUT: tokens_out}
        )
        decode.end(end)
    span.end(end)
