"""Batch fixtures: the e2e cluster (real nats-server with JetStream on disk, orchestrator,
pool, workers) plus helpers that submit batches and await their settling without polling."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from pathlib import Path

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from llorch_orch.batch import store
from llorch_orch.batch.cli import finished, request_status, submit
from llorch_orch.batch.config import DEFAULT_PRODUCER, RESULTS_STREAM
from schemas import BatchResult, BatchStatus, Heartbeat, Subjects, decoder
from tests.e2e.conftest import MODEL, Cluster, ClusterFactory, make_cluster

__all__ = ["MODEL", "Cluster", "ClusterFactory", "make_cluster"]

SETTLE_S = 120.0  # no batch event for this long fails the test
REFRESH_S = 5.0  # status is asked again after this long without an event
# fast redelivery after an owner dies, short retry backoff: keeps the suite quick
FAST = "[batch]\nack_wait_s = 3\nbackoff_s = [0.5]\nlost_grace_s = 3\n"
PRODUCER = DEFAULT_PRODUCER  # the namespace of the tests' batches (the CLI's on an open server)
_heartbeat = decoder(Heartbeat)


def jobs_file(tmp_path: Path, n: int, max_tokens: int = 4, name: str = "jobs.jsonl") -> Path:
    path = tmp_path / name
    lines = [
        {"custom_id": f"j{i}", "prompt": f"Item {i}:", "max_tokens": max_tokens, "seed": i}
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


async def submit_file(cluster: Cluster, path: Path, batch: str, producer: str = PRODUCER) -> None:
    assert await submit(cluster.nc, cluster.subjects, producer, path, batch, MODEL) == 0


async def wait_settled(
    nc: Client, batch: str, expected: int, producer: str = PRODUCER
) -> BatchStatus:
    """Until `expected` jobs have results and nothing waits; woken by each settled job."""
    subjects = Subjects()
    events = await nc.subscribe(subjects.batch_event(producer, batch))
    try:
        quiet = 0.0
        while True:
            # no answer while the orchestrator or the server restarts: ask again later
            with contextlib.suppress(NoRespondersError, NatsTimeout):
                status = await request_status(nc, subjects, producer, batch)
                assert isinstance(status, BatchStatus) or status.retriable, status
                if (
                    isinstance(status, BatchStatus)
                    and finished(status)
                    and status.done + status.failed == expected
                ):
                    return status
            try:
                await events.next_msg(timeout=REFRESH_S)
                quiet = 0.0
            except NatsTimeout:  # events are notices only (one may be lost): refresh
                quiet += REFRESH_S
                assert quiet < SETTLE_S, f"batch {batch}: no progress for {SETTLE_S}s"
    finally:
        await events.unsubscribe()


async def stored(nc: Client, batch: str, producer: str = PRODUCER) -> list[BatchResult]:
    return await store.results(nc.jetstream(), Subjects(), producer, batch)


async def results_written(nc: Client) -> int:
    """Messages ever written to the results stream (its last sequence): a rewrite of a result
    would raise it even though the stream keeps one message per subject."""
    info = await nc.jetstream().stream_info(RESULTS_STREAM)
    return info.state.last_seq


async def kill_worker(cluster: Cluster, worker_id: str) -> None:
    """SIGKILL a worker; its pid comes from its pool's heartbeats."""
    sub = await cluster.nc.subscribe(cluster.subjects.heartbeat_all)
    try:
        while True:
            hb = _heartbeat((await sub.next_msg(timeout=10)).data)
            pid = next((w.pid for w in hb.workers if w.worker_id == worker_id and w.pid), None)
            if pid:
                os.kill(pid, signal.SIGKILL)
                return
    finally:
        await sub.unsubscribe()
