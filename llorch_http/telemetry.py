"""The HTTP edge's metrics (docs/observability.md): requests by route and status, their
duration, the time to the first token as the HTTP client sees it, streams cut by the client."""

from __future__ import annotations

from opentelemetry import metrics

from llorch_common import tracing
from llorch_common.observe import SECONDS_BUCKETS

tracer = tracing.tracer("llorch.http")
_meter = metrics.get_meter("llorch.http")

requests = _meter.create_counter(
    "llorch.http.requests", "{request}", "HTTP requests answered, by route and status"
)
duration = _meter.create_histogram(
    "llorch.http.request.duration",
    "s",
    "Request received to the last byte of the response (a stream's end included)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
time_to_first_token = _meter.create_histogram(
    "llorch.http.time_to_first_token",
    "s",
    "Request received to the first token's bytes sent (stream) or ready (whole body)",
    explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
)
active = _meter.create_up_down_counter(
    "llorch.http.active_requests", "{request}", "Generation requests in progress, by route"
)
disconnects = _meter.create_counter(
    "llorch.http.disconnects",
    "{request}",
    "Generation requests whose client left before the end (their jobs are cancelled)",
)
