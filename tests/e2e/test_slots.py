"""Issue 14 end to end: a worker runs several jobs at once in its slots; the orchestrator fills
them before it starts a replica, and retries every job of a worker killed mid-batch."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from llorch_common import client
from schemas import End, Error, ErrorCode, Heartbeat, Started, WorkerLoad, decoder, encode

from .conftest import MODEL, ClusterFactory, terminal, text_of, worker_pid
from .test_brain import LONG, Job

_heartbeat = decoder(Heartbeat)


def worker_of(job: Job) -> str:
    return next(e.worker_id for e in job.events if isinstance(e, Started))


async def test_slots_fill_before_a_replica_starts(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster("[default_model]\nmax_workers = 2\n", slots=2)
    jobs = []
    for i in range(3):  # one after another: the first two share the first worker's slots
        # long enough that none ends while the others' workers load (they are cancelled)
        job = Job(cluster, job_id=f"s{i}", **{**LONG, "max_tokens": 1500})
        await job.reached(job.queued)
        jobs.append(job)
    for job in jobs:
        await job.reached(job.tokens)
    workers = [worker_of(job) for job in jobs]
    assert workers[0] == workers[1] != workers[2], workers
    state = await cluster.state()
    slots = {w.worker_id: w.slots for p in state.pools for w in p.workers}
    assert slots == {workers[0]: 2, workers[2]: 2}
    assert sorted(j.job_id for j in state.running) == ["s0", "s1", "s2"]
    for job in jobs:
        assert not isinstance(await client.cancel(cluster.nc, job.job_id), Error)
    for job in jobs:
        end = await job.result()
        assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED


async def test_a_worker_killed_mid_batch_has_every_job_retried(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster(slots=3)
    fields = {"prompt": "List the planets of the solar system:", "max_tokens": 40, "seed": 3}
    reference = text_of(await cluster.run(**fields, temperature=0.0))
    jobs = [Job(cluster, **fields) for _ in range(3)]  # greedy (Job's default temperature)
    for job in jobs:
        await job.reached(job.tokens)
    workers = {worker_of(job) for job in jobs}
    assert len(workers) == 1, [job.events[:2] for job in jobs]
    (worker,) = workers  # all three in its slots
    os.kill(await worker_pid(cluster, worker), signal.SIGKILL)
    for job in jobs:
        end = await job.result()
        assert isinstance(end, End), end
        assert text_of(job.events) == reference
        seqs = [e.seq for e in job.events]
        assert seqs == sorted(set(seqs))  # one continuous stream per job


async def test_run_says_why_its_job_waits(make_cluster: ClusterFactory) -> None:
    """`llorch generate` (and `llorch run`) print a queued job's place and the reasons
    `llorch job ID` would show: here its model's one worker has its one slot taken."""
    cluster = await make_cluster(slots=1)
    busy = Job(cluster, job_id="busy", **LONG)
    await busy.reached(busy.tokens)
    generate = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llorch_orch", "generate", "Hi", "--raw", "--max-tokens", "2",
        "--nats-url", cluster.stack.nats_url, stderr=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    assert generate.stderr is not None
    line = await asyncio.wait_for(generate.stderr.readline(), 120)
    assert line.decode().rstrip() == (
        f"[waiting for a worker: position 1 in line; 1/1 workers of {MODEL}, 1/1 slots busy]"
    )
    assert not isinstance(await client.cancel(cluster.nc, busy.job_id), Error)
    await asyncio.wait_for(generate.communicate(), 120)
    assert generate.returncode == 0


async def test_a_lost_load_report_is_mended_by_the_next(make_cluster: ClusterFactory) -> None:
    """Core NATS delivers at most once: a WorkerLoad lost with a server would leave the pool
    counting a slot busy for good, and the next job waiting for it. A stale load (1 busy) put
    in the place of the lost `0`, seen in a pool heartbeat, so the orchestrator counts the one
    slot busy: the job still runs, once the worker's next load report mends the count."""
    cluster = await make_cluster()
    assert isinstance(terminal(await cluster.run(prompt="Hi", max_tokens=2)), End)
    (worker,) = [w for p in (await cluster.state()).pools for w in p.workers]
    beats = await cluster.nc.subscribe(cluster.subjects.heartbeat("p1"))
    stale = encode(WorkerLoad(worker_id=worker.worker_id, pool_id="p1", slots_busy=1))
    seen = 0
    while seen != 1:  # a report of the worker's own may land first: put it back
        await cluster.nc.publish(cluster.subjects.ready(worker.worker_id), stale)
        beat = _heartbeat((await beats.next_msg(timeout=10)).data)
        seen = next(w.slots_busy for w in beat.workers if w.worker_id == worker.worker_id)
    await beats.unsubscribe()
    assert isinstance(terminal(await cluster.run(prompt="Hello", max_tokens=2)), End)
