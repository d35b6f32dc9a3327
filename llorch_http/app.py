"""The ASGI app of the HTTP edge: routes, each a thin shell over the pure mapping
(`mapping`, `bodies`, `errors`, `dashboard`) and one NATS request.

It holds no state between requests: a generation is one `api.generate` request whose events
become the response, the dashboard's data one `api.state` and one `api.models` request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import msgspec
from nats.aio.client import Client
from opentelemetry import trace
from opentelemetry.trace import Span, Status, StatusCode
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from llorch_common import client, tracing
from schemas import (
    MAX_MESSAGE_BYTES,
    CatalogEntry,
    ClusterState,
    End,
    Error,
    ModelsReply,
    Subjects,
    Token,
    new_id,
)

from . import bodies, dashboard, keys, mapping, telemetry
from .errors import ApiError, from_wire, invalid
from .generation import Job, Leaving

Endpoint = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("llorch.http")
_STATIC = resources.files("llorch_http") / "static"
_PAGE_TYPES = {".html": "text/html", ".js": "text/javascript", ".css": "text/css"}
# The page loads only its own files and talks only to this origin.
_PAGE_HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "cache-control": "no-cache",
}
_SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
_DONE = b"data: [DONE]\n\n"
READY_TIMEOUT_S = 2.0


@dataclass
class Edge:
    """What every request needs: the connection and the keys; nothing that changes."""

    nc: Client
    subjects: Subjects = field(default_factory=Subjects)
    keys: frozenset[str] = frozenset()
    started: int = field(default_factory=lambda: int(time.time()))  # `created` of models


def build(edge: Edge) -> Starlette:
    routes = [
        Route("/v1/models", _route("/v1/models", edge, _models), methods=["GET"]),
        Route("/v1/models/{model:path}", _route("/v1/models/{model}", edge, _model)),
        Route(
            "/v1/chat/completions", _route("/v1/chat/completions", edge, _chat), methods=["POST"]
        ),
        Route("/v1/completions", _route("/v1/completions", edge, _completions), methods=["POST"]),
        Route("/healthz", _route("/healthz", edge, _healthz, public=True)),
        Route("/readyz", _route("/readyz", edge, _readyz, public=True)),
        Route("/dashboard/state", _route("/dashboard/state", edge, _dashboard_state)),
        Route("/", _page("dashboard.html")),
        Route("/dashboard.js", _page("dashboard.js")),
        Route("/dashboard.css", _page("dashboard.css")),
    ]
    return Starlette(routes=routes, exception_handlers={HTTPException: _http_error})


Handler = Callable[[Request, Edge, "Measure"], Awaitable[Response]]


@dataclass
class Measure:
    """One request's metrics; a stream records its end itself, when its body is done."""

    route: str
    start: float = field(default_factory=time.perf_counter)
    done: bool = False
    status: int = 499  # a stream's, until its body has said otherwise: its client left

    def first_token(self) -> None:
        elapsed = time.perf_counter() - self.start
        telemetry.time_to_first_token.record(elapsed, {"route": self.route})

    def end(self, status: int) -> None:
        if self.done:
            return
        self.done = True
        labels = {"route": self.route, "status": str(status)}
        telemetry.requests.add(1, labels)
        telemetry.duration.record(time.perf_counter() - self.start, labels)


def _route(name: str, edge: Edge, handler: Handler, public: bool = False) -> Endpoint:
    """`handler` with the API key check, OpenAI-shaped errors and metrics."""

    async def endpoint(request: Request) -> Response:
        measure = Measure(name)
        try:
            if not public and not keys.authorized(request.headers.get("authorization"), edge.keys):
                raise ApiError(
                    401,
                    "missing or wrong API key (send `Authorization: Bearer KEY`)",
                    "invalid_api_key",
                    headers={"www-authenticate": "Bearer"},
                )
            response = await handler(request, edge, measure)
        except ApiError as exc:
            response = _error(exc)
        except Exception:  # a bug, or NATS gone for good: still an answer in the OpenAI shape
            log.exception("%s %s failed", request.method, name)
            response = _error(ApiError(500, "internal error of the HTTP edge", "internal_error"))
        if not isinstance(response, _Stream):
            measure.end(response.status_code)
        return response

    return endpoint


def _error(exc: ApiError) -> Response:
    # The edge's own refusals (fields, keys, sizes, paths) are the request's: sending it again
    # cannot help. A wire error says so itself (`from_wire`).
    headers = {"x-should-retry": "false", **exc.headers}
    return JSONResponse(exc.body(), exc.status, headers=headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404 and 405, in the OpenAI shape like every other error."""
    assert isinstance(exc, HTTPException)
    code = "not_found" if exc.status_code == 404 else "method_not_allowed"
    what = f"{request.method} {request.url.path}"
    return _error(ApiError(exc.status_code, f"{what}: {exc.detail}", code))


def _page(name: str) -> Endpoint:
    data = (_STATIC / name).read_bytes()
    media = _PAGE_TYPES[name[name.rindex(".") :]]

    async def page(_: Request) -> Response:
        return Response(data, media_type=media, headers=_PAGE_HEADERS)

    return page


def _ok(reply: Any) -> Any:
    """A reply, or its coded error as an HTTP error."""
    if isinstance(reply, Error):
        raise from_wire(reply)
    return reply


async def _catalog(edge: Edge) -> list[CatalogEntry]:
    reply: ModelsReply = _ok(await client.models(edge.nc, edge.subjects))
    return reply.models


async def _models(_: Request, edge: Edge, __: Measure) -> Response:
    return JSONResponse(bodies.models(await _catalog(edge), edge.started))


async def _model(request: Request, edge: Edge, _: Measure) -> Response:
    name = request.path_params["model"]
    if not any(e.model.name == name for e in await _catalog(edge)):
        raise ApiError(404, f"the model `{name}` does not exist", "model_not_found", "model")
    return JSONResponse(bodies.model(name, edge.started))


async def _healthz(_: Request, edge: Edge, __: Measure) -> Response:
    """Alive: the process serves HTTP (it exits when its NATS connection is closed for good)."""
    return JSONResponse({"status": "ok", "nats": "connected" if edge.nc.is_connected else "away"})


async def _readyz(_: Request, edge: Edge, __: Measure) -> Response:
    """Ready: NATS is connected and the orchestrator answers."""
    reply: ModelsReply | Error | None = None
    if edge.nc.is_connected:
        try:
            reply = await client.models(edge.nc, edge.subjects, READY_TIMEOUT_S, ready_s=0)
        except TimeoutError:
            reply = None
    if isinstance(reply, ModelsReply):
        return JSONResponse({"status": "ready", "models": len(reply.models)})
    why = reply.message if isinstance(reply, Error) else "no answer from the orchestrator"
    if not edge.nc.is_connected:
        why = "not connected to NATS"
    return JSONResponse({"status": "not ready", "reason": why}, 503)


async def _dashboard_state(_: Request, edge: Edge, __: Measure) -> Response:
    state, catalog = await asyncio.gather(
        client.state(edge.nc, edge.subjects), client.models(edge.nc, edge.subjects)
    )
    cluster: ClusterState = _ok(state)
    entries: ModelsReply = _ok(catalog)
    return JSONResponse(dashboard.view(cluster, entries.models, time.time()))


async def _chat(request: Request, edge: Edge, measure: Measure) -> Response:
    return await _generate(request, edge, measure, "chat")


async def _completions(request: Request, edge: Edge, measure: Measure) -> Response:
    return await _generate(request, edge, measure, "completion")


async def _body(request: Request) -> object:
    """The request's JSON, read up to the bus's message limit (a larger prompt could not
    travel anyway)."""
    data = bytearray()
    async for piece in request.stream():
        data += piece
        if len(data) > MAX_MESSAGE_BYTES:
            raise ApiError(
                413, f"the request body is over {MAX_MESSAGE_BYTES} bytes", "payload_too_large"
            )
    try:
        return msgspec.json.decode(bytes(data))
    except msgspec.DecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None


def _span(request: Request, route: str) -> Span:
    """The request's SERVER span, child of its `traceparent` when it has one. With tracing
    off it is the caller's context as is (or none), so the trace still reaches the bus."""
    parent = tracing.extract(dict(request.headers))
    if not tracing.enabled():
        return trace.get_current_span(parent)
    attrs = {
        "http.request.method": request.method,
        "http.route": route,
        "url.path": request.url.path,
    }
    return telemetry.tracer.start_span(
        f"{request.method} {route}", parent, kind=tracing.SERVER, attributes=attrs
    )


async def _generate(request: Request, edge: Edge, measure: Measure, kind: mapping.Kind) -> Response:
    plan = mapping.plan(kind, await _body(request))
    job_request = msgspec.structs.replace(plan.request, job_id=new_id("job"))
    head = bodies.Head.of(kind, str(job_request.job_id), int(time.time()), job_request.model)
    span = _span(request, measure.route)
    telemetry.active.add(1, {"route": measure.route})
    job = Job(edge.nc, edge.subjects, job_request)
    leaving = Leaving(request.receive)
    streaming = False
    try:
        with trace.use_span(span, end_on_exit=False):  # the generate request carries it
            first = await job.next()
        if isinstance(first, Error):
            raise from_wire(first)
        measure.first_token()
        headers = {"x-llorch-job-id": job.job_id}
        if plan.stream:
            streaming = True
            events = _events(job, head, plan.include_usage, first, measure)
            return _Stream(
                events,
                leaving,
                lambda: _end_stream(job, span, measure),
                headers={**_SSE_HEADERS, **headers},
            )
        text, end = await _collect(job, first)
        return JSONResponse(bodies.whole(head, text, end), headers=headers)
    except asyncio.CancelledError as exc:
        leaving.forgive(exc)
        telemetry.disconnects.add(1, {"route": measure.route})
        return Response(status_code=499)  # nobody reads it: the status of nginx's logs
    except ApiError as exc:
        span.set_status(Status(StatusCode.ERROR, exc.code))
        raise
    finally:
        if not streaming:
            leaving.stop()
            _finish(job, span, measure)


def _finish(job: Job, span: Span, measure: Measure) -> None:
    job.close()  # cancels the job when the answer was not complete
    span.end()
    telemetry.active.add(-1, {"route": measure.route})


async def _collect(job: Job, event: Any) -> tuple[str, End]:
    """The whole text, for a `stream: false` answer; an error on the way is the answer."""
    pieces: list[str] = []
    while isinstance(event, Token):
        pieces.append(event.text)
        event = await job.next()
    if isinstance(event, Error):
        raise from_wire(event)
    assert isinstance(event, End)
    return "".join(pieces), event


class _Stream(Response):
    """An SSE response, written by the request's own task (no task group, no task per chunk
    between a token and its bytes). Its client leaving cancels that task (`Leaving`); however
    it ends, `on_exit` runs."""

    media_type = "text/event-stream"

    def __init__(
        self,
        body: AsyncIterator[tuple[bytes, bool]],
        leaving: Leaving,
        on_exit: Callable[[], None],
        headers: dict[str, str],
    ) -> None:
        self.status_code = 200
        self.background = None
        self.init_headers(headers)
        self._body, self._leaving, self._on_exit = body, leaving, on_exit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            start = {"type": "http.response.start", "status": 200, "headers": self.raw_headers}
            await send(start)
            async for chunk, more in self._body:  # its last part ends the response
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
        except asyncio.CancelledError as exc:
            self._leaving.forgive(exc)
        finally:
            self._leaving.stop()
            self._on_exit()


def _end_stream(job: Job, span: Span, measure: Measure) -> None:
    if measure.status == 499:
        telemetry.disconnects.add(1, {"route": measure.route})
    _finish(job, span, measure)
    measure.end(measure.status)


async def _events(
    job: Job, head: bodies.Head, include_usage: bool, first: Any, measure: Measure
) -> AsyncIterator[tuple[bytes, bool]]:
    """The SSE body of a stream, each part with whether more follows: the role (chat), a chunk
    per token, then the finish reason, the usage when asked for and `[DONE]` in one last part
    (one write, the end of the body with it). An error after the first token can only be said
    in the stream: an `error` object, as OpenAI sends it, and no `[DONE]`."""
    sse = bodies.sse
    # a chat's role chunk leaves with the first token's: one write, one wake-up, before it
    role = sse(bodies.chunk(head, "", include_usage, first=True)) if head.kind == "chat" else b""
    token = bodies.TokenFrame.of(head, include_usage)  # encoded once, around each token's text
    event = first
    while isinstance(event, Token):
        yield role + token(event.text), True
        role = b""
        event = await job.next()
    if isinstance(event, Error):
        error = from_wire(event)
        measure.status = error.status
        yield role + sse(error.body()), False
        return
    assert isinstance(event, End)
    final = None if head.kind == "chat" else ""
    tail = role + sse(bodies.chunk(head, final, include_usage, finish=event.finish_reason))
    if include_usage:
        tail += sse(bodies.usage_chunk(head, event))
    measure.status = 200
    yield tail + _DONE, False
