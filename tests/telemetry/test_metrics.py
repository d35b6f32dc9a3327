"""The orchestrator's and the pool's Prometheus endpoints after a few real jobs."""

from __future__ import annotations

import asyncio
import contextlib
import urllib.request

import nats
from prometheus_client.parser import text_string_to_metric_families

from schemas import End
from tests.e2e.conftest import HEARTBEAT_S, MODEL, terminal
from tests.telemetry.conftest import Traced

JOBS = 3


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(url, timeout=10) as reply:
        text = reply.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


async def _until_scraped(t: Traced, url: str, name: str, expected: float, **labels: str) -> dict:
    """Scrape once per heartbeat until `name` reaches `expected` (the orchestrator counts a job
    when the worker's final status reaches it, just after the client saw the end)."""
    sub = await t.cluster.nc.subscribe(t.cluster.subjects.heartbeat_all)
    try:
        async with asyncio.timeout(30):
            while True:
                samples = await asyncio.to_thread(scrape, url)
                if value(samples, name, **labels) == expected:
                    return samples
                with contextlib.suppress(nats.errors.TimeoutError):
                    await sub.next_msg(timeout=HEARTBEAT_S * 4)
    finally:
        await sub.unsubscribe()


async def test_metrics_count_jobs_tokens_and_workers(traced: Traced) -> None:
    ends = []
    for i in range(JOBS):
        end = terminal(await traced.cluster.run(prompt=f"Count {i}", max_tokens=5, seed=i))
        assert isinstance(end, End)
        ends.append(end)
    tokens = sum(e.tokens_out for e in ends)

    orch = await _until_scraped(traced, traced.orch_metrics, "llorch_jobs_total", JOBS)
    assert value(orch, "llorch_jobs_total", outcome="finished", model=MODEL, code="") == JOBS
    assert value(orch, "llorch_tokens_generated_total", model=MODEL) == tokens
    assert value(orch, "llorch_tokens_prompt_total") == sum(e.tokens_in for e in ends)
    for histogram in ("llorch_job_duration_seconds", "llorch_queue_wait_seconds",
                      "llorch_job_time_to_first_token_seconds"):  # fmt: skip
        assert value(orch, f"{histogram}_count", model=MODEL) == JOBS, histogram
    assert value(orch, "llorch_job_time_to_first_token_seconds_sum") > 0
    assert value(orch, "llorch_spawns_total", pool="p1", model=MODEL) == 1
    assert value(orch, "llorch_queue_depth", priority="interactive") == 0
    assert value(orch, "llorch_workers", state="idle", model=MODEL, pool="p1") == 1

    pool = await asyncio.to_thread(scrape, traced.pool_metrics)
    assert value(pool, "llorch_pool_spawn_duration_seconds_count", outcome="ready") == 1
    assert value(pool, "llorch_pool_workers", state="ready", model=MODEL) == 1
    total = value(pool, "llorch_pool_device_memory_bytes", memory="total", kind="cpu")
    reserved = value(pool, "llorch_pool_device_memory_bytes", memory="reserved", kind="cpu")
    assert total > reserved > 0
