"""Issue 12 end to end: a worker refusing a bad job keeps serving; a job whose pool is killed
under its streaming worker still gets one stream with one terminal event; jobs queued when the
orchestrator stops get a retriable error. Real orchestrator, pools and workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess

from nats.aio.client import Client
from nats.aio.subscription import Subscription

from schemas import (
    End,
    Error,
    ErrorCode,
    Event,
    GenerateRequest,
    Queued,
    Started,
    Subjects,
    Token,
    decoder,
    encode,
)

from .conftest import MODEL, Cluster, ClusterFactory, terminal, text_of, worker_pid

_event = decoder(Event)
WAIT = 120.0  # per event: a worker may have to be spawned first (a model load)


class RawStream:
    """A job's events exactly as they arrive on the inbox: no de-duplication, nothing dropped,
    and reading goes on after a terminal event (llorch's client would stop there)."""

    def __init__(self, nc: Client, sub: Subscription) -> None:
        self.nc, self.sub = nc, sub
        self.events: list[Event] = []

    @classmethod
    async def submit(cls, nc: Client, **fields: object) -> RawStream:
        fields.setdefault("model", MODEL)
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        request = GenerateRequest(**fields)  # type: ignore[arg-type]
        await nc.publish(Subjects().generate, encode(request), reply=inbox)
        return cls(nc, sub)

    async def next(self) -> Event:
        event: Event = _event((await self.sub.next_msg(timeout=WAIT)).data)
        self.events.append(event)
        return event

    async def until(self, *kinds: type) -> Event:
        while not isinstance(event := await self.next(), kinds):
            pass
        return event

    async def rest(self) -> None:
        """Whatever is left: once no process can publish to the stream any more, one round
        trip to the server brings in everything sent before."""
        await self.nc.flush()
        while self.sub.pending_msgs:
            await self.next()


def child(cluster: Cluster, name: str) -> subprocess.Popen[bytes]:
    return dict(cluster.stack.children)[name]


async def exited(pid: int) -> None:
    """Until process `pid` (not our child) is gone: its pidfd becomes readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # gone already
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(fd, gone.set)
    try:
        await asyncio.wait_for(gone.wait(), WAIT)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def test_a_job_the_worker_refuses_fails_once_and_the_worker_serves_on(
    make_cluster: ClusterFactory,
) -> None:
    """Only the worker can tell this prompt overflows the context (it tokenizes it): the job
    fails with its code, before starting, and the same worker process serves the next job."""
    cluster = await make_cluster()
    first = await cluster.run(prompt="Hello", max_tokens=2)
    worker_id = next(e.worker_id for e in first if isinstance(e, Started))
    pid = await worker_pid(cluster, worker_id)
    overflow = await cluster.run(prompt="word " * 3000, max_tokens=16)
    (error,) = overflow  # the job never started: one event, the terminal one
    assert isinstance(error, Error) and error.code == ErrorCode.CONTEXT_OVERFLOW, overflow
    assert not error.retriable and "exceed n_ctx" in error.message
    after = await cluster.run(prompt="Hello", max_tokens=2)
    assert isinstance(terminal(after), End)
    assert next(e.worker_id for e in after if isinstance(e, Started)) == worker_id
    assert await worker_pid(cluster, worker_id) == pid


async def test_killing_the_pool_of_a_streaming_worker_gives_one_stream_one_terminal(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(pools=("p1", "p2"))
    job = {"prompt": "Write a long story about a dragon:", "max_tokens": 300, "temperature": 0.0}
    reference = await cluster.run(**job)
    assert isinstance(terminal(reference), End)
    stream = await RawStream.submit(cluster.nc, **job)
    started = await stream.until(Started)
    assert isinstance(started, Started)
    await stream.until(Token)
    pid = await worker_pid(cluster, started.worker_id)
    (pool_id,) = [p.pool_id for p in (await cluster.state()).pools
                  if any(w.worker_id == started.worker_id for w in p.workers)]  # fmt: skip
    pool = child(cluster, f"pool-{pool_id}")
    pool.send_signal(signal.SIGKILL)
    pool.wait()
    end = await stream.until(End, Error)
    await exited(pid)  # the old worker, after its pool: nothing of it can arrive later
    await stream.rest()
    events = stream.events
    assert terminal(events) is end and isinstance(end, End), events  # one, and the last
    tokens = [e for e in events if isinstance(e, Token)]
    assert len({e.seq for e in tokens}) <= job["max_tokens"] and end.tokens_out <= 300
    seqs = [e.seq for e in events]
    assert seqs == sorted(set(seqs)), seqs  # the retry resumed exactly where the worker stopped
    assert text_of(events) == text_of(reference)
    assert started.worker_id not in {w.worker_id for p in (await cluster.state()).pools
                                     for w in p.workers}  # fmt: skip


async def test_stopping_the_orchestrator_fails_its_queued_jobs_retriably(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    running = await RawStream.submit(cluster.nc, prompt="Tell me a story:", max_tokens=200)
    await running.until(Token)
    queued = await RawStream.submit(cluster.nc, prompt="Hello", max_tokens=4)
    await queued.until(Queued)
    child(cluster, "orchestrator").send_signal(signal.SIGTERM)
    error = await queued.next()
    assert isinstance(error, Error), queued.events
    assert error.code == ErrorCode.UNAVAILABLE and error.retriable and "stopping" in error.message
    assert isinstance(await running.until(End, Error), End)  # worker to client, on its own
