"""One generate request is one trace across the orchestrator, pool and worker processes."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import Callable

from schemas import BatchJob, End, Event, GenerateRequest, Subjects, decoder, encode
from tests.e2e.conftest import MODEL
from tests.telemetry.conftest import Traced
from tests.telemetry.otlp import Span

_event = decoder(Event)
GENERATE = "process llorch.v1.api.generate"
EXECUTE = "process llorch.v1.worker.{worker}.execute"
SPAWN = "send llorch.v1.pool.{pool}.spawn"
POOL_SPAWN = "process llorch.v1.pool.{pool}.spawn"
EXPECTED = {  # span name -> (service, kind, name of its parent span)
    GENERATE: ("llorch-orchestrator", "consumer", None),
    "llorch.queue": ("llorch-orchestrator", "internal", GENERATE),
    SPAWN: ("llorch-orchestrator", "client", GENERATE),
    POOL_SPAWN: ("llorch-pool", "server", SPAWN),
    "llorch.worker.load": ("llorch-worker", "internal", POOL_SPAWN),
    "send llorch.v1.worker.{worker}.execute": ("llorch-orchestrator", "producer", GENERATE),
    EXECUTE: ("llorch-worker", "consumer", "send llorch.v1.worker.{worker}.execute"),
    "llorch.prefill": ("llorch-worker", "internal", EXECUTE),
    "llorch.decode": ("llorch-worker", "internal", EXECUTE),
}  # fmt: skip


async def _raw_generate(t: Traced, headers: dict[str, str]) -> list[tuple[Event, dict[str, str]]]:
    """Events of one job with the headers each arrived with (no client library in between)."""
    nc, subjects = t.cluster.nc, Subjects()
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    request = GenerateRequest(model=MODEL, prompt="Once upon a time", max_tokens=6, seed=3)
    await nc.publish(subjects.generate, encode(request), reply=inbox, headers=headers)
    out = []
    while not out or not isinstance(out[-1][0], End):
        msg = await sub.next_msg(timeout=60)
        out.append((_event(msg.data), msg.headers or {}))
    await sub.unsubscribe()
    return out


def _trace_complete(trace_id: str) -> Callable[[list[Span]], bool]:
    def done(spans: list[Span]) -> bool:
        return set(EXPECTED) <= {s.name for s in spans if s.trace_id == trace_id}

    return done


async def test_one_trace_across_processes_continues_the_clients(traced: Traced) -> None:
    trace_id, client_span = secrets.token_hex(16), secrets.token_hex(8)
    events = await _raw_generate(traced, {"traceparent": f"00-{trace_id}-{client_span}-01"})
    end = events[-1][0]
    assert isinstance(end, End) and end.tokens_out > 0

    spans = await asyncio.to_thread(traced.receiver.wait_for, _trace_complete(trace_id))
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    by_id = {s.span_id: s for s in mine.values()}
    for name, (service, kind, parent) in EXPECTED.items():
        span = mine[name]
        assert (span.service, span.kind) == (service, kind), span
        if parent is None:
            assert span.parent_id == client_span  # the client's span is honoured as parent
        else:
            assert by_id[span.parent_id].name == parent, (name, span.parent_id)

    job_id = end.job_id
    generate, execute = mine[GENERATE], mine[EXECUTE]
    assert generate.attrs["messaging.system"] == "nats"
    assert generate.attrs["messaging.destination.name"] == "llorch.v1.api.generate"
    assert generate.attrs["messaging.operation.type"] == "process"
    assert generate.attrs["llorch.job.id"] == job_id
    assert generate.attrs["llorch.model"] == MODEL
    assert generate.attrs["llorch.outcome"] == "finished"
    assert generate.attrs["llorch.tokens.out"] == end.tokens_out
    assert mine["llorch.queue"].attrs["llorch.queue.position"] == 1
    # why it waited, each time that changed: a worker started for it, then its load
    assert [e for e in generate.events if e == "llorch.pending"] == ["llorch.pending"] * 2
    worker_id = generate.attrs["llorch.worker.id"]
    assert execute.attrs["messaging.destination.name"] == f"llorch.v1.worker.{worker_id}.execute"
    assert execute.attrs["messaging.destination.template"] == EXECUTE.split(" ")[1]
    assert execute.attrs["llorch.job.id"] == job_id
    assert execute.attrs["llorch.pool.id"] == "p1"
    assert execute.attrs["llorch.tokens.out"] == end.tokens_out
    assert execute.attrs["llorch.tokens.in"] == end.tokens_in
    assert execute.attrs["llorch.ttft_ms"] > 0
    assert "first_token" in execute.events
    assert mine["llorch.worker.load"].attrs["llorch.worker.id"] == worker_id

    # every event on the stream carries the trace: the orchestrator's `queued`, the worker's rest
    for _, headers in events:
        assert headers["traceparent"].split("-")[1] == trace_id

    log = (traced.logs / "orchestrator.log").read_text()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    ended = [line for line in lines if line.get("job_id") == job_id]
    assert ended and ended[0]["trace_id"] == trace_id and ended[0]["worker_id"] == worker_id
    assert "Once upon" not in log  # no prompt text


async def test_a_request_without_traceparent_starts_a_new_root(traced: Traced) -> None:
    events = await _raw_generate(traced, {})
    job_id = events[-1][0].job_id

    def found(spans: list[Span]) -> bool:
        names = {s.name for s in spans if s.attrs.get("llorch.job.id") == job_id}
        return {GENERATE, EXECUTE} <= names

    spans = await asyncio.to_thread(traced.receiver.wait_for, found)
    generate = next(s for s in spans if s.name == GENERATE and s.attrs["llorch.job.id"] == job_id)
    execute = next(s for s in spans if s.name == EXECUTE and s.attrs["llorch.job.id"] == job_id)
    assert generate.parent_id == ""
    assert execute.trace_id == generate.trace_id


async def test_a_batch_job_continues_the_trace_of_its_publish(traced: Traced) -> None:
    trace_id, producer_span = secrets.token_hex(16), secrets.token_hex(8)
    job = BatchJob(model=MODEL, prompt="Once", max_tokens=4, seed=1, custom_id="c1")
    headers = {"traceparent": f"00-{trace_id}-{producer_span}-01"}
    await traced.cluster.nc.jetstream().publish(
        Subjects().batch_submit("p1", "b1", "c1"), encode(job), headers=headers
    )
    batch_span = "process llorch.v1.batch.submit.{producer}.{batch}.{custom_id}"

    def done(spans: list[Span]) -> bool:
        return {batch_span, EXECUTE} <= {s.name for s in spans if s.trace_id == trace_id}

    spans = await asyncio.to_thread(traced.receiver.wait_for, done)
    mine = {s.name: s for s in spans if s.trace_id == trace_id}
    assert mine[batch_span].parent_id == producer_span
    assert mine[batch_span].attrs["llorch.priority"] == "batch"
    assert mine[batch_span].attrs["messaging.destination.name"] == "llorch.v1.batch.submit.p1.b1.c1"
    # ... and the stored result carries the same trace: a consumer of results can join it
    js = traced.cluster.nc.jetstream()
    sub = await js.subscribe(Subjects().batch_result("p1", "b1", "c1"), ordered_consumer=True)
    result = await sub.next_msg(timeout=60)  # delivered whether stored before or after this
    await sub.unsubscribe()
    assert result.headers is not None
    assert result.headers["traceparent"].split("-")[1] == trace_id
