"""Process telemetry set-up shared by every llorch process: traces (llorch_common.tracing), metrics
and logs, all from the environment (documented in docs/observability.md).

- Metrics: OpenTelemetry metrics SDK, exposed for Prometheus on `127.0.0.1:<port>` when a port
  is given (`--metrics-port` / `LLORCH_METRICS_PORT`), and pushed over OTLP/HTTP when
  `OTEL_METRICS_EXPORTER` names `otlp` and an OTLP endpoint is set. Neither: no SDK, the
  instruments are the API's no-ops.
- Logs: `LLORCH_LOG_FORMAT=json` gives one JSON object per line with the current trace and span
  ids and the job/worker/pool ids a call passes in `extra`; URL credentials are masked in every
  format.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from typing import Any

from opentelemetry import metrics, trace

from llorch_common import tracing

METRICS_PORT_ENV = "LLORCH_METRICS_PORT"
LOG_FORMAT_ENV = "LLORCH_LOG_FORMAT"
CONTEXT_FIELDS = ("job_id", "worker_id", "pool_id", "model")  # taken from a record's `extra`
# histogram buckets for durations in seconds (the SDK's default ones suit milliseconds)
SECONDS_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5),  # under a second
    *(1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0),
)
_USERINFO = re.compile(r"(\w+://)[^/@\s]+@")  # nats://user:password@host -> nats://***@host


def metrics_port_default() -> int | None:
    value = os.environ.get(METRICS_PORT_ENV, "")
    return int(value) if value.strip() else None


def setup_metrics(default_service: str, port: int | None, **attributes: str) -> bool:
    """Install the metrics SDK with the readers asked for; returns whether any was."""
    readers: list[Any] = []
    if port:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import start_http_server

        start_http_server(port, addr="127.0.0.1")  # loopback only: put a proxy in front
        readers.append(PrometheusMetricReader())
    wanted = os.environ.get("OTEL_METRICS_EXPORTER", "").split(",")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    )
    if "otlp" in wanted and endpoint:
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter()))
    if not readers:
        return False
    from opentelemetry.sdk.metrics import MeterProvider

    resource = tracing.resource(default_service, **attributes)
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=readers))
    return True


class _MaskCredentials(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "@" in message:
            record.msg, record.args = _USERINFO.sub(r"\1***@", message), None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, service, msg, trace_id, span_id, ids."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "service": self.service,
            "msg": record.getMessage(),
        }
        ctx = trace.get_current_span().get_span_context()
        if ctx.is_valid:
            out["trace_id"], out["span_id"] = f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"
        for name in (*CONTEXT_FIELDS, "trace_id", "span_id"):
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: int = logging.INFO) -> None:
    """Root logging to stderr, text or JSON lines (`LLORCH_LOG_FORMAT=json`)."""
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get(LOG_FORMAT_ENV, "").lower() == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    handler.addFilter(_MaskCredentials())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def setup(default_service: str, metrics_port: int | None = None, **attributes: str) -> bool:
    """Logs, traces and metrics of one process; returns whether traces are recorded."""
    setup_logging(os.environ.get("OTEL_SERVICE_NAME", default_service))
    setup_metrics(default_service, metrics_port, **attributes)
    return tracing.setup_tracing(default_service, **attributes)
