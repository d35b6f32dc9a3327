"""Issue 15: llorch on a NATS cluster of three servers — the orchestrator, the pools and the
client each on a server of their own, the batch streams replicated, and a server killed under a
running stream and under a batch."""

from __future__ import annotations

import asyncio
from pathlib import Path

from llorch_common import client
from llorch_orch.batch.config import BATCH_STREAM, CONSUMER, RESULTS_STREAM
from schemas import End, Error, ErrorCode, Started

from ..batch.conftest import FAST, jobs_file, results_written, stored, submit_file, wait_settled
from ..e2e.conftest import ClusterFactory, terminal
from ..e2e.test_brain import LONG, Job
from .conftest import CLIENT, NatsCluster, placed


async def test_jobs_flow_between_servers_and_the_streams_have_three_replicas(
    make_cluster: ClusterFactory, nats_cluster: NatsCluster
) -> None:
    urls = nats_cluster.urls
    cluster = await make_cluster(pools=())  # orchestrator on server 0, this client on 2
    cluster.spawn_pool("p2", url=urls[1])
    cluster.spawn_pool("p3", url=urls[2])
    await cluster.wait_for_pools("p2", "p3")
    assert {p.pool_id for p in (await cluster.state()).pools if p.alive} == {"p2", "p3"}

    assert isinstance(terminal(await cluster.run(prompt="Hello", seed=1)), End)
    together = await asyncio.gather(*(cluster.run(prompt=f"Count to {i}:") for i in range(3)))
    assert all(isinstance(terminal(events), End) for events in together)

    running = Job(cluster, **LONG)
    await running.reached(running.tokens)
    reply = await client.cancel(cluster.nc, running.job_id)
    assert not isinstance(reply, Error) and reply.outcome == "cancelled"
    end = await running.result()
    assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED

    js = cluster.nc.jetstream()
    for stream in (BATCH_STREAM, RESULTS_STREAM):
        assert (await js.stream_info(stream)).config.num_replicas == 3
        await placed(js, stream, 3)
    await placed(js, BATCH_STREAM, 3, CONSUMER)


async def test_the_server_of_a_running_job_is_killed(
    make_cluster: ClusterFactory, nats_cluster: NatsCluster
) -> None:
    urls = nats_cluster.urls
    cluster = await make_cluster(pools=())
    cluster.spawn_pool("p1", url=f"{urls[1]},{urls[2]}")  # its worker gets the same list
    await cluster.wait_for_pools("p1")
    running = Job(cluster, stall_s=20, **LONG)  # its terminal may be lost with the client's
    await running.reached(running.tokens)  # server: the client's stall timer then ends it
    worker = next(e.worker_id for e in running.events if isinstance(e, Started))
    victim = await nats_cluster.node_of(f"llorch-worker-{worker}")

    nats_cluster.kill(victim)
    end = await running.result()  # one terminal event, whatever was cut off ...
    if victim != CLIENT:  # ... and only the client's own move can lose it events
        assert isinstance(end, End), running.events
    # ... the pool and the worker are back on another server (of their list, or one the
    # cluster told them of: node_of looks on the running ones only) ...
    for name in ("llorch-pool-p1", f"llorch-worker-{worker}"):
        assert await nats_cluster.node_of(name) != victim
    # ... and serve
    assert isinstance(terminal(await cluster.run(prompt="Hello again", seed=2)), End)


async def test_a_server_killed_mid_batch_loses_no_result_and_adds_none(
    make_cluster: ClusterFactory, nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    urls = nats_cluster.urls
    cluster = await make_cluster(FAST, pools=())
    cluster.spawn_pool("p1", url=f"{urls[1]},{urls[2]}")
    await cluster.wait_for_pools("p1")
    events = await cluster.nc.subscribe(cluster.subjects.batch_event("cli", "kb"))
    await submit_file(cluster, jobs_file(tmp_path, 12, max_tokens=8), "kb")
    for _ in range(3):
        await events.next_msg(timeout=120)
    victim = await nats_cluster.node_of("llorch-pool-p1")

    nats_cluster.kill(victim)  # a replica of both streams, and the pool's server
    await nats_cluster.restart(victim)  # back once it caught up

    status = await wait_settled(cluster.nc, "kb", 12)
    assert (status.done, status.failed) == (12, 0)
    results = await stored(cluster.nc, "kb")
    assert sorted(r.custom_id for r in results) == sorted(f"j{i}" for i in range(12))
    assert await results_written(cluster.nc) == 12  # never a second write for a job
