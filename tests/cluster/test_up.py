"""Issue 15: `llorch up --nats-url a,b,c` joins an existing cluster. Two of them on two pool
ids: one orchestrator leads, the other stands by, both pools serve; the leading `llorch up`
stopped, the other's orchestrator takes over (the lease released at once) and serves."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from nats.aio.client import Client

from llorch_common import client
from schemas import ClusterState, End, GenerateRequest

from ..e2e.conftest import MODEL
from ..e2e.test_supervision import Up
from .conftest import NatsCluster


async def test_two_llorch_up_on_a_cluster_one_leads_and_the_other_takes_over(
    nats_cluster: NatsCluster, tmp_path: Path
) -> None:
    join = ["--nats-url", nats_cluster.url_list, "--creds-dir", str(nats_cluster.creds_dir)]
    join += ["--http", "off"]  # the cluster's seeds hold no identity for the edge
    a = Up(tmp_path / "a", *join, "--pool-id", "p1")
    b: Up | None = None
    nc = await client.connect(nats_cluster.urls[2], nats_cluster.credentials("admin"))
    try:
        await a.line("llorch is up")
        b = Up(tmp_path / "b", *join, "--pool-id", "p2")
        await b.line("llorch is up")
        state = await _state(nc)
        assert {p.pool_id for p in state.pools if p.alive} == {"p1", "p2"}
        assert state.leader is not None
        first = state.leader
        assert await _served(nc)

        a.stop()  # its orchestrator stops cleanly: the lease is released, b's leads at once
        async with asyncio.timeout(60):
            while (await _state(nc)).leader in (None, first):
                await asyncio.sleep(0.1)  # asked again: nobody tells a client of a new lead
        now = await _state(nc)
        assert now.leader is not None and now.leader.epoch > first.epoch
        assert await _served(nc)  # on p2's worker: p1 left with its `llorch up`
    finally:
        await nc.close()
        if b is not None:
            b.stop()
        a.stop()


async def _state(nc: Client) -> ClusterState:
    while True:
        with contextlib.suppress(TimeoutError):
            state = await client.state(nc, timeout=2)
            if isinstance(state, ClusterState):
                return state
        await asyncio.sleep(0.1)  # no leader answers yet


async def _served(nc: Client) -> bool:
    request = GenerateRequest(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    events = [e async for e in client.stream(nc, request, stall_s=120)]
    return isinstance(events[-1], End)
