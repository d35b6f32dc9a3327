"""Issue 3 end to end: queue, placement, eviction, cancellation and recovery with real processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from llorch_common import client
from schemas import End, Error, ErrorCode, Event, GenerateRequest, Queued, Started, Token

from .conftest import MODEL, Cluster, ClusterFactory, terminal, text_of, worker_pid

LONG = {"prompt": "Write a long story about a dragon:", "max_tokens": 300}
MODEL_B = "smollm2-b"


class Job:
    """One job streamed in the background; `started` is set when its worker begins."""

    def __init__(
        self,
        cluster: Cluster,
        order: list[str] | None = None,
        stall_s: float = 120,
        **fields: object,
    ) -> None:
        """`stall_s`: the client's stall timer (a stream that lost its terminal event ends
        with the client's own WORKER_LOST that long after its last event)."""
        fields.setdefault("model", MODEL)
        fields.setdefault("max_tokens", 4)
        fields.setdefault("temperature", 0.0)  # the same text every run: no early stop by chance
        self.request = GenerateRequest(prompt=fields.pop("prompt", "Hello"), **fields)  # type: ignore[arg-type]
        self.events: list[Event] = []
        self.started = asyncio.Event()
        self.queued = asyncio.Event()
        self.tokens = asyncio.Event()
        self.order = order
        self.stall_s = stall_s
        self.task = asyncio.create_task(self._run(cluster))

    async def _run(self, cluster: Cluster) -> None:
        async for event in client.stream(cluster.nc, self.request, stall_s=self.stall_s):
            self.events.append(event)
            if isinstance(event, Queued):
                self.queued.set()
            elif isinstance(event, Started):
                if self.order is not None:
                    self.order.append(event.job_id)
                self.started.set()
            elif isinstance(event, Token):
                self.tokens.set()

    async def reached(self, milestone: asyncio.Event) -> None:
        """Until `milestone` (queued, started, first token); fails at once, with the events,
        if the job ends without reaching it."""
        waiting = asyncio.ensure_future(milestone.wait())
        await asyncio.wait({waiting, self.task}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        assert milestone.is_set(), self.events

    @property
    def job_id(self) -> str:
        return next(e.job_id for e in self.events if isinstance(e, Queued | Started))

    async def result(self) -> End | Error:
        await asyncio.wait_for(self.task, self.stall_s + 60)
        return terminal(self.events)


def add_model(data_dir: Path, name: str, path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "llorch_pool",
            "models",
            "add",
            name,
            str(path),
            "--data-dir",
            str(data_dir),
        ],
        check=True,
        capture_output=True,
    )


async def test_queue_forms_behind_one_worker_and_drains_in_order(
    make_cluster: ClusterFactory,
) -> None:
    cluster = await make_cluster()
    first = Job(cluster, **LONG)
    await first.reached(first.tokens)
    order: list[str] = []
    waiting = []
    for i in range(3):
        job = Job(cluster, order, job_id=f"q{i}")
        await job.reached(job.queued)  # submitted in this order
        waiting.append(job)
    positions = [next(e.position for e in j.events if isinstance(e, Queued)) for j in waiting]
    assert positions == [1, 2, 3]
    await client.cancel(cluster.nc, first.job_id)
    for job in waiting:
        assert isinstance(await job.result(), End)
    assert order == ["q0", "q1", "q2"]
    # positions were updated while the queue drained
    assert [e.position for e in waiting[2].events if isinstance(e, Queued)] == [3, 2, 1]


async def test_queue_full_is_refused_with_retry_after(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster("queue_capacity = 1\n")
    running = Job(cluster, **LONG)
    await running.reached(running.tokens)
    queued = Job(cluster)
    await queued.reached(queued.queued)
    refused = await Job(cluster).result()
    assert isinstance(refused, Error) and refused.code == ErrorCode.QUEUE_FULL
    assert refused.retriable and refused.retry_after_ms and refused.retry_after_ms > 0
    await client.cancel(cluster.nc, running.job_id)
    assert isinstance(await queued.result(), End)


async def test_deadline_ends_a_job_still_queued(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    running = Job(cluster, **LONG)
    await running.reached(running.tokens)
    late = await Job(cluster, deadline_ms=300).result()
    assert isinstance(late, Error) and late.code == ErrorCode.DEADLINE_EXCEEDED
    await client.cancel(cluster.nc, running.job_id)


async def test_cancel_queued_and_running_jobs(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    running = Job(cluster, **LONG)
    await running.reached(running.tokens)
    queued = Job(cluster)
    await queued.reached(queued.queued)
    reply = await client.cancel(cluster.nc, queued.job_id)
    assert not isinstance(reply, Error) and reply.outcome == "cancelled"
    end = await queued.result()
    assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED
    assert not any(isinstance(e, Started) for e in queued.events)
    await client.cancel(cluster.nc, running.job_id)
    end = await running.result()
    assert isinstance(end, Error) and end.code == ErrorCode.CANCELLED
    again = await client.cancel(cluster.nc, running.job_id)
    assert not isinstance(again, Error) and again.outcome == "already_finished"
    unknown = await client.cancel(cluster.nc, "never-was")
    assert isinstance(unknown, Error) and unknown.code == ErrorCode.NOT_FOUND


async def test_two_models_run_at_once(
    make_cluster: ClusterFactory, model_path: Path, tmp_path: Path
) -> None:
    cluster = await make_cluster(pools=())
    add_model(cluster.stack.data_dir, MODEL_B, model_path)
    cluster.spawn_pool("p1")
    await cluster.wait_for_pools("p1")
    a = Job(cluster, **LONG)
    b = Job(cluster, model=MODEL_B, **LONG)
    await asyncio.gather(a.reached(a.tokens), b.reached(b.tokens))  # both stream at the same time
    state = await cluster.state()
    assert sorted(w.model for w in state.pools[0].workers) == [MODEL, MODEL_B]
    for job in (a, b):
        await client.cancel(cluster.nc, job.job_id)
        await job.result()


async def test_idle_worker_is_stopped_after_keep_alive(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster("[default_model]\nkeep_alive_s = 0.5\n")
    assert isinstance(await Job(cluster).result(), End)
    await cluster.until(lambda s: not s.pools[0].workers)


async def test_eviction_frees_memory_for_another_model(
    make_cluster: ClusterFactory, model_path: Path
) -> None:
    cluster = await make_cluster(pools=())
    add_model(cluster.stack.data_dir, MODEL_B, model_path)
    cluster.spawn_pool("p1", "--cpu-memory-bytes", str(450 << 20))  # room for one worker
    await cluster.wait_for_pools("p1")
    first = Job(cluster)
    assert isinstance(await first.result(), End)
    second = Job(cluster, model=MODEL_B)
    assert isinstance(await second.result(), End)
    state = await cluster.state()
    assert [w.model for w in state.pools[0].workers] == [MODEL_B]


async def test_killed_worker_is_retried_transparently(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    fields = {"prompt": "List the planets of the solar system:", "max_tokens": 40, "seed": 3,
              "temperature": 0.7}  # fmt: skip
    reference = await cluster.run(**fields)
    job = Job(cluster, **fields)
    await job.reached(job.tokens)
    started = next(e for e in job.events if isinstance(e, Started))
    os.kill(await worker_pid(cluster, started.worker_id), signal.SIGKILL)
    end = await job.result()
    assert isinstance(end, End), end
    assert text_of(job.events) == text_of(reference)
    seqs = [e.seq for e in job.events]
    assert seqs == sorted(set(seqs))  # one continuous stream: no repeats, no reordering


async def test_killed_pool_is_marked_lost(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    (pool,) = [p for name, p in cluster.stack.children if name == "pool-p1"]
    pool.send_signal(signal.SIGKILL)
    pool.wait()
    await cluster.until(lambda s: not s.pools[0].alive)


async def test_orchestrator_restart_keeps_workers_and_streams(make_cluster: ClusterFactory) -> None:
    cluster = await make_cluster()
    job = Job(cluster, prompt="Tell me a story:", max_tokens=60)
    await job.reached(job.tokens)
    worker_id = next(e.worker_id for e in job.events if isinstance(e, Started))
    (orch,) = [p for name, p in cluster.stack.children if name == "orchestrator"]
    orch.send_signal(signal.SIGKILL)
    orch.wait()
    cluster.stack.spawn("orchestrator-2", ["llorch_orch", "orch"])
    assert isinstance(await job.result(), End)  # streamed on, worker to client, meanwhile
    await cluster.until(lambda s: bool(s.pools) and bool(s.pools[0].workers))
    after = Job(cluster)
    assert isinstance(await after.result(), End)
    started = next(e for e in after.events if isinstance(e, Started))
    assert started.worker_id == worker_id  # adopted, not restarted
