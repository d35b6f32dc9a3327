"""A request that reaches a stack still starting: it waits for the orchestrator, or gets a
clear retriable error; never a decoding crash (NATS answers "no responders" meanwhile)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from nats.aio.client import Client

from llorch_common import client
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack
from schemas import End, Error, ErrorCode, GenerateRequest, Subjects

from .conftest import MODEL, Cluster

REQUEST = GenerateRequest(model=MODEL, prompt="Hello", max_tokens=4)


async def test_with_no_orchestrator_a_request_is_unavailable_and_retriable(nc: Client) -> None:
    events = [e async for e in client.stream(nc, REQUEST, ready_s=0.3)]
    assert len(events) == 1 and isinstance(events[0], Error), events
    assert events[0].code == ErrorCode.UNAVAILABLE and events[0].retriable
    reply = await client.state(nc, ready_s=0.3)
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNAVAILABLE


async def test_a_request_sent_before_the_stack_starts_is_served_once_it_does(
    nc: Client, nats_server: NatsServer, tmp_path: Path
) -> None:
    seen: list[object] = []

    async def consume() -> None:
        async for event in client.stream(nc, REQUEST, ready_s=120):
            seen.append(event)

    waiting = asyncio.create_task(consume())
    await _no_orchestrator_yet(nc)
    assert not seen
    (tmp_path / "logs").mkdir()
    stack = Stack(data_dir=tmp_path, nats_url=nats_server.url, prefix=Subjects().prefix)
    try:
        stack.spawn("orchestrator", ["llorch_orch", "orch"])
        Cluster(stack, nc).spawn_pool("p1")
        await asyncio.wait_for(waiting, timeout=120)
    finally:
        stack.stop()
    assert isinstance(seen[-1], End) and seen[-1].tokens_out > 0, seen


async def _no_orchestrator_yet(nc: Client) -> None:
    """A round trip to the server that is answered 'no responders': the consumer task, which
    runs up to its first wait meanwhile, has sent its request into the same void."""
    reply = await client.state(nc, ready_s=0)
    assert isinstance(reply, Error) and reply.code == ErrorCode.UNAVAILABLE
