"""llorch's client against a scripted orchestrator on a real nats-server: the events of a lead
that has passed are dropped (docs/protocol.md, "Orchestrator failover")."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client

from llorch_common import client
from llorch_common.fence import with_epoch
from schemas import (
    End,
    Event,
    GenerateRequest,
    Leadership,
    Queued,
    Started,
    Subjects,
    Token,
    decoder,
    encode,
)

S = Subjects()


async def test_an_event_of_a_passed_lead_is_dropped(nc: Client) -> None:
    """Leader A (epoch 5) queues the job, freezes, and B (epoch 6) takes over: the client sends
    the job again and B queues it. A, woken and not yet aware, sends the job a new position
    (seq 1) before it steps down: the client drops it, so the worker's `started` (seq 1, sent
    for B) is not hidden behind it as a seq already seen."""
    requests = await nc.subscribe(S.generate)
    request = GenerateRequest(model="m", prompt="hi", max_tokens=1, job_id="j1")
    got: asyncio.Queue[Event] = asyncio.Queue()

    async def read() -> None:
        async for event in client.stream(nc, request, S, stall_s=30):
            got.put_nowait(event)

    reading = asyncio.ensure_future(read())
    first = await requests.next_msg(timeout=10)
    await nc.publish(first.reply, encode(Queued(seq=0, job_id="j1", position=1)),
                     headers=with_epoch(None, 5))  # fmt: skip
    assert isinstance(await asyncio.wait_for(got.get(), 10), Queued)  # A's, while it leads
    await nc.publish(S.leader, encode(Leadership(6, "B", time.time())))
    again = await requests.next_msg(timeout=10)  # sent again: heard of the new lead
    assert decoder(GenerateRequest)(again.data).job_id == "j1" and again.reply == first.reply
    await nc.publish(again.reply, encode(Queued(seq=0, job_id="j1", position=1)),
                     headers=with_epoch(None, 6))  # fmt: skip
    await nc.publish(first.reply, encode(Queued(seq=1, job_id="j1", position=1)),
                     headers=with_epoch(None, 5))  # A, woken  # fmt: skip
    worker = (  # the worker's events carry no epoch
        Started(seq=1, job_id="j1", worker_id="w1", model="m", seed=1),
        Token(seq=2, text="hello"),
        End(seq=3, job_id="j1", finish_reason="length", tokens_in=1, tokens_out=1, ttft_ms=1.0,
            total_ms=1.0),
    )  # fmt: skip
    for event in worker:
        await nc.publish(again.reply, encode(event))
    await asyncio.wait_for(reading, 30)
    rest = [got.get_nowait() for _ in range(got.qsize())]
    assert [type(e) for e in rest] == [Queued, Started, Token, End], rest  # B's queued, ...
