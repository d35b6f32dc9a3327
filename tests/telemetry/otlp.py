"""A real OTLP/HTTP receiver for tests: decodes ExportTraceServiceRequest protobufs that the
processes under test post to `/v1/traces`, and lets a test wait for the spans it expects."""

from __future__ import annotations

import gzip
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    kind: str
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root
    attrs: dict[str, Any]
    events: tuple[str, ...]
    start_ns: int
    end_ns: int


def _value(v: AnyValue) -> Any:
    return getattr(v, v.WhichOneof("value")) if v.WhichOneof("value") else None


def decode(body: bytes) -> list[Span]:
    request = ExportTraceServiceRequest.FromString(body)
    out = []
    for rs in request.resource_spans:
        resource = {a.key: _value(a.value) for a in rs.resource.attributes}
        for ss in rs.scope_spans:
            for s in ss.spans:
                out.append(
                    Span(
                        service=resource.get("service.name", ""),
                        name=s.name,
                        kind=KINDS.get(s.kind, "unspecified"),
                        trace_id=s.trace_id.hex(),
                        span_id=s.span_id.hex(),
                        parent_id=s.parent_span_id.hex(),
                        attrs={a.key: _value(a.value) for a in s.attributes},
                        events=tuple(e.name for e in s.events),
                        start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano,
                    )
                )
    return out


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    spans: list[Span] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    @property
    def endpoint(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def add(self, spans: list[Span]) -> None:
        with self.changed:
            self.spans.extend(spans)
            self.changed.notify_all()

    def wait_for(self, predicate: Callable[[list[Span]], bool], timeout: float = 60) -> list[Span]:
        """Blocks until `predicate(all spans so far)` holds (woken by every export)."""
        with self.changed:
            if not self.changed.wait_for(lambda: predicate(self.spans), timeout):
                raise TimeoutError(f"spans never matched; got {[s.name for s in self.spans]}")
            return list(self.spans)


def start() -> Receiver:
    receiver: Receiver

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            if self.path == "/v1/traces":
                receiver.add(decode(body))
                reply = ExportTraceServiceResponse().SerializeToString()
            else:
                reply = b""  # metrics or logs: accepted, not inspected
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: object) -> None:
            pass

    receiver = Receiver(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    threading.Thread(target=receiver.server.serve_forever, daemon=True).start()
    return receiver
