"""Orchestrator high availability: two orchestrators, one leads (docs/architecture.md).

Real processes: the leader A and the standby B against one nats-server, a CPU pool with one
slot (so a second job waits in the leader's memory). A dies by kill -9, or is frozen by
SIGSTOP while B takes over and then woken: running streams finish (tokens go worker →
client), the job only A held is sent again by its client and runs once, B leads with a newer
epoch, and a stale leader's commands are refused by pools and workers.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import nats
import pytest
from nats.errors import TimeoutError as NatsTimeout

from llorch_common import client
from llorch_common.fence import with_epoch
from llorch_orch.batch.config import RESULTS_STREAM
from schemas import (
    ClusterState,
    End,
    Error,
    ErrorCode,
    Event,
    Execute,
    GenerateRequest,
    Leadership,
    Queued,
    SpawnRequest,
    Started,
    Token,
    decoder,
    encode,
)
from tests.batch.conftest import FAST, PRODUCER, jobs_file, stored, submit_file, wait_settled
from tests.e2e.conftest import MODEL, Cluster, ClusterFactory, terminal

TTL = "2"  # seconds: a short lease keeps the takeover quick
LONG = 160  # tokens of the job that outlives the leader (greedy: never ends early)
_reply = decoder(Error)


async def with_standby(make_cluster: ClusterFactory, config: str = "") -> Cluster:
    """A leads (started first, and the pool reported to it), B stands by: same server, config
    and identity (tests/cluster runs these tests on a cluster of three)."""
    cluster = await make_cluster(config, orch_args=("--name", "A", "--lease-ttl", TTL))
    stack = cluster.stack
    args = ["llorch_orch", "orch", "--name", "B", "--lease-ttl", TTL, "--slots", "1"]
    args += ["--config", str(stack.data_dir / "orch.toml"), *stack.seed_args("orchestrator")]
    stack.spawn("orchestrator-b", [*args, *stack.operator_args()])
    assert (await leader(cluster)).orchestrator == "A"
    return cluster


async def leader(cluster: Cluster, want: str | None = None) -> Leadership:
    """Who answers `api.state` as leader (once it is `want`). While a frozen leader still holds
    its subscriptions a request may go to it and get no answer: it is asked again."""
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(NatsTimeout, nats.errors.NoRespondersError):
                state = await client.state(cluster.nc, cluster.subjects, timeout=1, ready_s=0)
                now = state.leader if isinstance(state, ClusterState) else None
                if now is not None and want in (None, now.orchestrator):
                    return now
            sub = await cluster.nc.subscribe(cluster.subjects.leader)  # woken by a takeover
            with contextlib.suppress(NatsTimeout):
                await sub.next_msg(timeout=1)
            await sub.unsubscribe()


def orchestrator_pid(cluster: Cluster, name: str = "orchestrator") -> int:
    return next(proc.pid for n, proc in cluster.stack.children if n == name)


@contextlib.asynccontextmanager
async def streaming(
    cluster: Cluster, request: GenerateRequest
) -> AsyncIterator[asyncio.Queue[Event]]:
    """A job's events, as they come, in a queue (its stream runs in the background)."""
    events: asyncio.Queue[Event] = asyncio.Queue()

    async def read() -> None:
        async for event in client.stream(cluster.nc, request, cluster.subjects, stall_s=120):
            events.put_nowait(event)

    task = asyncio.create_task(read())
    try:
        yield events
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(events: asyncio.Queue[Event], kind: type) -> list[Event]:
    """Events up to the first of `kind` (which must come before the stream ends)."""
    seen: list[Event] = []
    while not seen or not isinstance(seen[-1], kind):
        seen.append(await asyncio.wait_for(events.get(), 120))
        assert isinstance(seen[-1], kind) or not isinstance(seen[-1], End | Error), seen
    return seen


async def rest(events: asyncio.Queue[Event]) -> list[Event]:
    seen = [await asyncio.wait_for(events.get(), 120)]
    while not isinstance(seen[-1], End | Error):
        seen.append(await asyncio.wait_for(events.get(), 120))
    return seen


def job(job_id: str, prompt: str = "Hi", max_tokens: int = 8) -> GenerateRequest:
    return GenerateRequest(
        model=MODEL, prompt=prompt, max_tokens=max_tokens, temperature=0, job_id=job_id
    )


def long_job(job_id: str) -> GenerateRequest:
    """Greedy and longer than any wait of these tests: it cannot end before they act."""
    return job(job_id, "Count: one, two,", LONG)


async def test_kill_9_of_the_leader_streams_finish_and_the_standby_serves(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await with_standby(make_cluster)
    before = await leader(cluster)
    quick = job("q1")
    async with streaming(cluster, long_job("long")) as running:
        head = await until(running, Token)
        async with streaming(cluster, quick) as waiting:
            assert isinstance((await until(waiting, Queued))[-1], Queued)  # only A holds it
            os.kill(orchestrator_pid(cluster), signal.SIGKILL)
            now = await leader(cluster, "B")
            assert now.epoch > before.epoch
            # the stream in flight never needed the leader: all of its tokens arrive
            tail = await rest(running)
            end = terminal(head + tail)
            assert isinstance(end, End) and end.tokens_out == LONG
            # the waiting job's client sent it again to B, which ran it once
            events = await rest(waiting)
            assert isinstance(events[-1], End), events
            assert sum(isinstance(e, Started) for e in events) == 1
    served = await cluster.run(prompt="Hello", max_tokens=4)
    assert isinstance(terminal(served), End)


async def test_a_clean_stop_of_the_leader_hands_its_queued_job_to_the_standby(
    make_cluster: ClusterFactory,
) -> None:
    """SIGTERM: the leader ends its queued job with a retriable UNAVAILABLE ("send the request
    again") and releases the lease; the standby leads at once and llorch's client, which got
    that error before its job started, sends the job again: it runs there, once."""
    cluster = await with_standby(make_cluster)
    before = await leader(cluster)
    async with streaming(cluster, long_job("long3")) as running:
        await until(running, Token)
        async with streaming(cluster, job("q3")) as waiting:
            await until(waiting, Queued)
            child = next(p for n, p in cluster.stack.children if n == "orchestrator")
            child.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(child.wait, 60) == 0
            now = await leader(cluster, "B")
            assert now.epoch > before.epoch
            events = await rest(waiting)
            assert isinstance(events[-1], End), events  # the error never reached the caller
            assert sum(isinstance(e, Started) for e in events) == 1
            assert isinstance((await rest(running))[-1], End)


async def test_kill_9_of_the_leader_mid_batch_every_result_once(
    make_cluster: ClusterFactory, tmp_path: Path
) -> None:
    cluster = await with_standby(make_cluster, FAST)
    events = await cluster.nc.subscribe(cluster.subjects.batch_event(PRODUCER, "ha"))
    await submit_file(cluster, jobs_file(tmp_path, 12, max_tokens=8), "ha")
    for _ in range(3):
        await events.next_msg(timeout=120)
    os.kill(orchestrator_pid(cluster), signal.SIGKILL)
    await leader(cluster, "B")
    status = await wait_settled(cluster.nc, "ha", 12)
    assert (status.done, status.failed) == (12, 0)
    results = await stored(cluster.nc, "ha")
    assert sorted(r.custom_id for r in results) == sorted(f"j{i}" for i in range(12))
    info = await cluster.nc.jetstream().stream_info(RESULTS_STREAM)
    assert info.state.last_seq == 12  # no result was written twice


async def test_a_frozen_leader_woken_after_a_takeover_is_refused_and_steps_down(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await with_standby(make_cluster)
    old = await leader(cluster)
    quick = job("q2")
    a = orchestrator_pid(cluster)
    async with streaming(cluster, long_job("long2")) as running:
        started = (await until(running, Started))[-1]
        assert isinstance(started, Started)
        async with streaming(cluster, quick) as waiting:
            await until(waiting, Queued)  # A holds it, and will try to dispatch it when woken
            os.kill(a, signal.SIGSTOP)
            try:
                assert (await leader(cluster, "B")).epoch > old.epoch
            finally:
                os.kill(a, signal.SIGCONT)
            assert isinstance((await rest(running))[-1], End)
            events = await rest(waiting)
            assert isinstance(events[-1], End) and sum(isinstance(e, Started) for e in events) == 1
    log = cluster.stack.log_file("orchestrator")
    await _logged(log, f"stepping down (epoch {old.epoch})")
    # whatever A had sent after waking, an old epoch's command is refused where it lands
    execute = Execute(
        job_id="stale", model=MODEL, prompt="x", max_tokens=1, temperature=0, top_p=1,
        top_k=0, seed=1, stream="_INBOX.stale",
    )  # fmt: skip
    subject = cluster.subjects.execute(started.worker_id)
    msg = await cluster.nc.request(
        subject, encode(execute), timeout=10, headers=with_epoch(None, old.epoch)
    )
    refused = _reply(msg.data)
    assert refused.code == ErrorCode.STALE_LEADER, refused
    spawn = SpawnRequest(worker_id="w-stale", model=MODEL, device=0, n_ctx=512)
    msg = await cluster.nc.request(
        cluster.subjects.spawn("p1"), encode(spawn), timeout=10, headers=with_epoch(None, old.epoch)
    )
    assert _reply(msg.data).code == ErrorCode.STALE_LEADER
    # A stands by again; B still leads and serves
    assert (await leader(cluster)).orchestrator == "B"
    assert isinstance(terminal(await cluster.run(prompt="Hello", max_tokens=4)), End)


async def _logged(log: Path, line: str) -> None:
    """Until the log holds `line` (the process writes it as it happens; read as it grows)."""
    async with asyncio.timeout(60):
        while line not in log.read_text(errors="replace"):
            await asyncio.sleep(0.1)  # a file has no event to await


@pytest.mark.parametrize("kind", ["execute", "spawn"])
async def test_a_command_without_the_newest_epoch_is_refused(
    make_cluster: ClusterFactory, kind: str
) -> None:
    """The fence alone: after a lead of epoch N was seen, epoch N-1 (or none) is refused."""
    cluster = await make_cluster(orch_args=("--name", "A"))
    epoch = (await leader(cluster)).epoch
    end = terminal(await cluster.run(prompt="Hi", max_tokens=2))
    assert isinstance(end, End)
    worker = (await cluster.state()).pools[0].workers[0].worker_id
    if kind == "execute":
        subject = cluster.subjects.execute(worker)
        body = Execute(
            job_id="x", model=MODEL, prompt="x", max_tokens=1, temperature=0, top_p=1, top_k=0,
            seed=1, stream="_INBOX.x",
        )  # fmt: skip
    else:
        subject = cluster.subjects.spawn("p1")
        body = SpawnRequest(worker_id="w-x", model=MODEL, device=0, n_ctx=512)  # type: ignore[assignment]
    for headers in (None, with_epoch(None, epoch - 1)):
        msg = await cluster.nc.request(subject, encode(body), timeout=10, headers=headers)
        error = _reply(msg.data)
        assert error.code == ErrorCode.STALE_LEADER
        assert error.message == (
            f"command of epoch {0 if headers is None else epoch - 1}; a newer leader "
            f"(epoch {epoch}) leads"
        )
