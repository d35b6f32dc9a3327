"""Trace context on the bus (DESIGN invariant 6): part of the wire contract, like subjects.

Every llorch message may carry W3C `traceparent`/`tracestate` NATS headers (lower-case keys).
A sender injects its current span's context; a receiver extracts it and makes its span a child,
so one client request is one trace across all processes. A message without them starts a new
root trace. This module also spells the OpenTelemetry messaging attribute names llorch uses and
installs the tracing SDK from the standard `OTEL_*` environment variables (see
docs/observability.md); when none asks for export, no SDK is installed and the API stays the
no-op one, whose spans cost a few hundred nanoseconds and record nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

__all__ = [
    "CLIENT",
    "CONSUMER",
    "INTERNAL",
    "PRODUCER",
    "SERVER",
    "Span",
    "SpanKind",
    "enabled",
    "extract",
    "inject",
    "messaging",
    "serving",
    "setup_tracing",
    "span_name",
    "template",
    "tracer",
]

PRODUCER, CONSUMER, CLIENT, SERVER, INTERNAL = (
    SpanKind.PRODUCER,
    SpanKind.CONSUMER,
    SpanKind.CLIENT,
    SpanKind.SERVER,
    SpanKind.INTERNAL,
)

# OpenTelemetry messaging semantic conventions
MESSAGING_SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"  # the concrete subject
DESTINATION_TEMPLATE = "messaging.destination.template"  # the subject with {id} placeholders
OPERATION_TYPE = "messaging.operation.type"  # send | receive | process
OPERATION_NAME = "messaging.operation.name"
CONVERSATION_ID = "messaging.message.conversation_id"  # the job id
BODY_SIZE = "messaging.message.body.size"

# llorch's own attributes
JOB_ID = "llorch.job.id"
MODEL = "llorch.model"
PRIORITY = "llorch.priority"
POOL_ID = "llorch.pool.id"
WORKER_ID = "llorch.worker.id"
DEVICE = "llorch.device"
ATTEMPT = "llorch.attempt"
QUEUE_POSITION = "llorch.queue.position"
REASONS = "llorch.reasons"  # why a job waits (attribute of the `llorch.pending` span event)
OUTCOME = "llorch.outcome"
ERROR_CODE = "llorch.error.code"
TOKENS_IN = "llorch.tokens.in"
TOKENS_OUT = "llorch.tokens.out"
TTFT_MS = "llorch.ttft_ms"
FINISH_REASON = "llorch.finish_reason"

_W3C = TraceContextTextMapPropagator()
_enabled = False  # set by setup_tracing: whether this process records spans


class _HeaderGetter(Getter[Mapping[str, str]]):
    """NATS headers are case-sensitive; W3C keys are lower-case but accept any case on read."""

    def get(self, carrier: Mapping[str, str], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            value = next((v for k, v in carrier.items() if k.lower() == key), None)
        return None if value is None else [value]

    def keys(self, carrier: Mapping[str, str]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()


def inject(
    headers: Mapping[str, str] | None = None, context: Context | None = None
) -> dict[str, str] | None:
    """The trace context of `context` (default: the current one) plus `headers`, which win:
    a caller's own `traceparent` is kept. Returns the headers unchanged (None stays None) when
    there is no valid span to carry, so an untraced publish sends no header block at all."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context)
    if not carrier:
        return dict(headers) if headers else None
    return {**carrier, **headers} if headers else carrier


def extract(headers: Mapping[str, str] | None) -> Context:
    """The context a received message carries; an empty one (a new root) when it has none."""
    return _W3C.extract(headers or {}, getter=_GETTER)


def template(subject: str, **ids: str) -> str:
    """`subject` with each id token replaced by `{name}`: low-cardinality span names."""
    names = {value: f"{{{name}}}" for name, value in ids.items()}
    return ".".join(names.get(token, token) for token in subject.split("."))


def span_name(operation: str, subject_template: str) -> str:
    """Messaging span names are `<operation> <destination template>`."""
    return f"{operation} {subject_template}"


def messaging(operation: str, subject: str, subject_template: str, **extra: Any) -> dict[str, Any]:
    """Attributes of a messaging span; `extra` holds llorch.* attributes (None values dropped)."""
    attrs = {
        MESSAGING_SYSTEM: "nats",
        DESTINATION: subject,
        DESTINATION_TEMPLATE: subject_template,
        OPERATION_TYPE: operation if operation in ("send", "receive", "process") else "process",
        OPERATION_NAME: operation,
    }
    attrs.update((k, v) for k, v in extra.items() if v is not None)
    return attrs


def enabled() -> bool:
    """Whether spans are recorded; hoist it out of hot paths to skip optional span work."""
    return _enabled


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


def serving(
    tracer: trace.Tracer, subject: str, headers: Mapping[str, str] | None, **ids: str
) -> Span:
    """The SERVER span of a request handler, child of the request's context. `ids` name the
    subject's id tokens (`worker=...`) for the span name; reply with `inject(...)` of it."""
    name = template(subject, **ids)
    attrs = messaging("process", subject, name, **{f"llorch.{k}.id": v for k, v in ids.items()})
    return tracer.start_span(
        span_name("process", name), extract(headers), kind=SERVER, attributes=attrs
    )


def _exporters() -> Iterable[str]:
    if os.environ.get("OTEL_SDK_DISABLED", "").lower() == "true":
        return []
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    # OTLP only with an endpoint: an unconfigured process exports nothing (and costs nothing)
    return [n for n in names if n == "console" or (n == "otlp" and endpoint)]


def resource(default_service: str, **attributes: str) -> Any:
    """The process's resource: `OTEL_SERVICE_NAME`/`OTEL_RESOURCE_ATTRIBUTES` win over defaults."""
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    res = Resource.create(attributes)
    if str(res.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        res = res.merge(Resource({SERVICE_NAME: default_service}))
    return res


def setup_tracing(default_service: str, **attributes: str) -> bool:
    """Install the tracing SDK when `OTEL_TRACES_EXPORTER` asks for `console`, or `otlp` (the
    default) with an `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`. The sampler follows
    `OTEL_TRACES_SAMPLER[_ARG]`. Returns whether spans are recorded at all."""
    exporters = list(_exporters())
    if not exporters:
        return False
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    provider = TracerProvider(resource=resource(default_service, **attributes))
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    if "console" in exporters:
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        one_line = ConsoleSpanExporter(formatter=lambda s: s.to_json(indent=None) + os.linesep)
        provider.add_span_processor(SimpleSpanProcessor(one_line))
    trace.set_tracer_provider(provider)
    global _enabled
    _enabled = True
    return True
