"""llorch_common.tracing and .observe in-process: W3C headers, the no-tracing default, logs."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from llorch_common import observe, tracing

TRACE_ID, SPAN_ID = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
PARENT = f"00-{TRACE_ID:032x}-{SPAN_ID:016x}-01"


def _context() -> trace.Context:
    ctx = SpanContext(TRACE_ID, SPAN_ID, is_remote=False, trace_flags=TraceFlags(1))
    return trace.set_span_in_context(NonRecordingSpan(ctx))


def test_inject_writes_lower_case_w3c_headers_and_keeps_the_callers() -> None:
    assert tracing.inject({"x": "1"}, _context()) == {"traceparent": PARENT, "x": "1"}
    mine = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert tracing.inject({"traceparent": mine}, _context())["traceparent"] == mine


def test_without_a_span_nothing_is_added() -> None:
    assert tracing.inject() is None
    assert tracing.inject({"x": "1"}) == {"x": "1"}


@pytest.mark.parametrize("key", ["traceparent", "Traceparent", "TRACEPARENT"])
def test_extract_reads_the_parent_in_any_case(key: str) -> None:
    span = trace.get_current_span(tracing.extract({key: PARENT}))
    assert (span.get_span_context().trace_id, span.get_span_context().span_id) == (
        TRACE_ID,
        SPAN_ID,
    )


def test_no_header_is_a_new_root() -> None:
    assert not trace.get_current_span(tracing.extract(None)).get_span_context().is_valid


def test_template_names_ids() -> None:
    subject = "llorch.v1.worker.w-1.execute"
    assert tracing.template(subject, worker="w-1") == "llorch.v1.worker.{worker}.execute"


@pytest.mark.parametrize(
    "env",
    [
        {},  # nothing configured
        {"OTEL_TRACES_EXPORTER": "otlp"},  # OTLP without an endpoint
        {"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"},
    ],
)
def test_no_exporter_unless_asked(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_SDK_DISABLED",
                 "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_METRICS_EXPORTER"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing.setup_tracing("llorch-test") is False
    assert not tracing.enabled()
    assert type(trace.get_tracer_provider()).__module__.startswith("opentelemetry.trace")
    assert observe.setup_metrics("llorch-test", None) is False
    span = tracing.tracer("t").start_span("x")
    assert not span.is_recording()


def test_json_log_line_carries_trace_and_job_and_masks_credentials() -> None:
    formatter = observe.JsonFormatter("llorch-test")
    record = logging.LogRecord("llorch.orch", logging.INFO, __file__, 1, "job %s ended on %s",
                               ("j-1", "nats://alice:s3cret@host:4222"), None)  # fmt: skip
    record.job_id, record.worker_id = "j-1", "w-1"
    observe._MaskCredentials().filter(record)
    with trace.use_span(trace.get_current_span(_context())):
        line = json.loads(formatter.format(record))
    assert line["trace_id"] == f"{TRACE_ID:032x}" and line["span_id"] == f"{SPAN_ID:016x}"
    assert (line["job_id"], line["worker_id"], line["level"]) == ("j-1", "w-1", "info")
    assert line["msg"] == "job j-1 ended on nats://***@host:4222"
