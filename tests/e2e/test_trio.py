"""Issue 2: three real processes over NATS stream real tokens from the bundled model."""

from __future__ import annotations

import asyncio
import json
import os
import signal

from llorch_common import client
from schemas import (
    End,
    Error,
    ErrorCode,
    Event,
    GenerateRequest,
    ModelsReply,
    Started,
    Token,
    decoder,
)

from .conftest import MODEL, Cluster, ClusterFactory, terminal, text_of, worker_pid

_event = decoder(Event)


async def test_generation_streams_tokens_with_one_end(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    events = await cluster.run(prompt="The capital of France is", max_tokens=12, seed=1)
    end = terminal(events)
    assert isinstance(end, End)
    started = [e for e in events if isinstance(e, Started)]
    assert len(started) == 1 and started[0].model == MODEL and started[0].seed == 1
    tokens = [e for e in events if isinstance(e, Token)]
    assert 1 <= len(tokens) <= end.tokens_out  # an event carries 1+ tokens (see protocol)
    assert [e.seq for e in events] == list(range(len(events)))  # +1 per event, from 0


async def test_same_seed_at_temperature_zero_gives_same_text(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    first = await cluster.run(prompt="Once upon a time", max_tokens=16, seed=7, temperature=0)
    second = await cluster.run(prompt="Once upon a time", max_tokens=16, seed=7, temperature=0)
    assert text_of(first) and text_of(first) == text_of(second)


async def test_cancel_mid_stream_ends_with_cancelled(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    request = GenerateRequest(
        model=MODEL, prompt="Count to one thousand:", max_tokens=400, temperature=0
    )
    events: list[Event] = []
    async for event in client.stream(cluster.nc, request):
        events.append(event)
        if isinstance(event, Token) and sum(isinstance(e, Token) for e in events) == 2:
            reply = await client.cancel(cluster.nc, _job_id(events))
            assert not isinstance(reply, Error) and reply.outcome == "cancelled"
    end = terminal(events)
    assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED
    assert sum(isinstance(e, Token) for e in events) < 400


async def test_unknown_model_is_refused(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    events = await cluster.run(prompt="hi", model="no-such-model")
    end = terminal(events)
    assert isinstance(end, Error) and end.code == ErrorCode.MODEL_NOT_FOUND
    assert MODEL in end.message  # the error names what is available


async def test_malformed_requests_get_invalid_params_and_service_goes_on(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    for payload in (b"{not json", b'{"model": 3, "prompt": "x"}', b'{"prompt": "no model"}',
                    b'{"model": "m", "prompt": "x", "max_tokens": -1}', b"[]"):  # fmt: skip
        msg = await cluster.nc.request(cluster.subjects.generate, payload, timeout=10)
        error = _event(msg.data)
        assert isinstance(error, Error) and error.code == ErrorCode.INVALID_PARAMS, payload
    msg = await cluster.nc.request(
        cluster.subjects.generate,
        json.dumps({"model": MODEL, "prompt": "x", "job_id": "a.b"}).encode(),
        timeout=10,
    )
    error = _event(msg.data)
    assert isinstance(error, Error) and error.code == ErrorCode.INVALID_ID
    assert isinstance(terminal(await cluster.run(prompt="still serving?")), End)


async def test_raw_json_client_needs_nothing_of_ours(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    inbox = cluster.nc.new_inbox()
    sub = await cluster.nc.subscribe(inbox)
    request = {"model": MODEL, "prompt": "Hello", "max_tokens": 4, "seed": 1, "temperature": 0}
    await cluster.nc.publish(cluster.subjects.generate, json.dumps(request).encode(), reply=inbox)
    types = []
    while not types or types[-1] not in ("end", "error"):
        msg = await sub.next_msg(timeout=60)
        types.append(json.loads(msg.data)["type"])
    assert types[:2] == ["queued", "started"]  # cold start: the worker is spawned first
    assert types[-1] == "end" and "token" in types


async def test_killed_worker_gives_worker_lost_without_retry(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster("max_job_attempts = 1\n")
    request = GenerateRequest(
        model=MODEL, prompt="Write a long story:", max_tokens=500, temperature=0
    )
    events: list[Event] = []
    async for event in client.stream(cluster.nc, request, stall_s=60):
        events.append(event)
        if isinstance(event, Token) and sum(isinstance(e, Token) for e in events) == 2:
            await _kill_worker(cluster, _started(events).worker_id)
    end = terminal(events)
    assert isinstance(end, Error) and end.code == ErrorCode.WORKER_LOST and end.retriable
    assert "worker lost mid-job" in end.message  # from the orchestrator, not the client's stall


def _started(events: list[Event]) -> Started:
    return next(e for e in events if isinstance(e, Started))


def _job_id(events: list[Event]) -> str:
    return _started(events).job_id


async def _kill_worker(cluster: Cluster, worker_id: str) -> None:
    os.kill(await worker_pid(cluster, worker_id), signal.SIGKILL)


async def test_state_models_and_service_discovery(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    await cluster.run(prompt="warm up")
    state = await cluster.state()
    (pool,) = state.pools
    assert pool.pool_id == "p1" and pool.devices[0].kind == "cpu"
    assert [w.state for w in pool.workers] == ["ready"]
    reply = await client.models(cluster.nc)
    assert isinstance(reply, ModelsReply)
    assert MODEL in [m.model.name for m in reply.models]
    assert any(m.measured for m in reply.models)  # learned from the worker's ready report
    names = set()
    inbox = cluster.nc.new_inbox()
    sub = await cluster.nc.subscribe(inbox)
    await cluster.nc.publish("$SRV.PING", b"", reply=inbox)
    while len(names) < 3:
        names.add(json.loads((await sub.next_msg(timeout=10)).data)["name"])
    assert names == {"llorch-orchestrator", "llorch-pool", "llorch-worker"}
    await asyncio.sleep(0)  # let the subscription settle before teardown
