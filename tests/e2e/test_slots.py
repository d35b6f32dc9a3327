"""Issue 14 end to end: a worker runs several jobs at once in its slots; the orchestrator fills
them before it starts a replica, and retries every job of a worker killed mid-batch."""

from __future__ import annotations

import os
import signal

from llorch_common import client
from schemas import End, Error, ErrorCode, Started

from .conftest import ClusterFactory, text_of, worker_pid
from .test_brain import LONG, Job


def worker_of(job: Job) -> str:
    return next(e.worker_id for e in job.events if isinstance(e, Started))


async def test_slots_fill_before_a_replica_starts(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster("[default_model]\nmax_workers = 2\n", slots=2)
    jobs = []
    for i in range(3):  # one after another: the first two share the first worker's slots
        job = Job(cluster, job_id=f"s{i}", **LONG)
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
