"""A real orchestrator service under attack: forged heartbeats under auth, and garbage on every
subject it serves (it must keep answering)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client

from llorch_common import client
from llorch_orch.core import Core, OrchConfig
from llorch_orch.service import OrchestratorService
from schemas import (
    ClusterState,
    Error,
    ErrorCode,
    Heartbeat,
    ModelsReply,
    Subjects,
    decoder,
    encode,
)
from tests.security.conftest import WAIT_S, ConnectAs

S = Subjects()
GARBAGE = [
    b"",
    b"\xff\xfe\x00garbage",
    b"[" * 100_000 + b"]" * 100_000,
    b'{"type":"generate","model":"m","prompt":"' + b"a" * 900_000 + b'"}',
    b'{"type":"heartbeat","pool_id":"p1.*"}',
    b'{"type":"cancel","job_id":"../../etc"}',
    b"null",
    b'{"type":' * 5000,
]
_error = decoder(Error)


def beat(pool_id: str, ts: float | None = None) -> bytes:
    hb = Heartbeat(pool_id=pool_id, ts=ts or time.time(), seq=1, interval_s=60.0,
                   devices=[], workers=[], models=[])  # fmt: skip
    return encode(hb)


@pytest.fixture
async def orchestrator(connect_as: ConnectAs) -> AsyncIterator[OrchestratorService]:
    service = OrchestratorService((await connect_as("orchestrator")).nc, Core(OrchConfig()))
    await service.start()
    yield service
    await service.stop()


async def pools_seen(nc: Client, wanted: str) -> list[str]:
    """Pool ids in the orchestrator's view once `wanted` is among them (asked, not slept on)."""
    for _ in range(200):
        state = await client.state(nc)
        assert isinstance(state, ClusterState), state
        pools = sorted(p.pool_id for p in state.pools)
        if wanted in pools:
            return pools
    raise AssertionError(f"{wanted} never appeared")


async def test_forged_and_skewed_heartbeats_are_dropped(
    orchestrator: OrchestratorService, connect_as: ConnectAs
) -> None:
    p1, p2 = await connect_as("pool-p1"), await connect_as("pool-p2")
    alice = await connect_as("client-alice")
    await p1.nc.publish(S.heartbeat("p2"), beat("p2"))  # another pool's subject: the server says no
    await p1.denied("Publish", S.heartbeat("p2"))
    await p2.nc.publish(S.heartbeat("p2"), beat("p2", ts=time.time() + 3600))  # far future
    await p2.nc.publish(S.heartbeat("p2"), beat("p2", ts=time.time() - 3600))  # far past
    await p2.nc.flush()  # routed to the orchestrator before p1's messages below
    await p1.nc.publish(S.heartbeat("p1"), beat("p2"))  # own subject, body names p2: dropped
    await p1.nc.publish(S.heartbeat("p1"), beat("p1"))  # the genuine one, last
    assert await pools_seen(alice.nc, "p1") == ["p1"]


async def test_orchestrator_answers_after_garbage_on_every_subject(nc: Client) -> None:
    service = OrchestratorService(nc, Core(OrchConfig()))
    await service.start()
    try:
        served = [S.heartbeat("p1"), S.ready("w1"), S.job_status("j1"), f"{service._inbox}.a",
                  f"{service._inbox}.j1.1.w1", S.snapshot_request, "$SRV.PING"]  # fmt: skip
        for data in GARBAGE:
            for subject in served:
                await nc.publish(subject, data)
            for subject in (S.generate, S.cancel, S.jobs_get):  # each answers with a coded error
                reply = await nc.request(subject, data, timeout=WAIT_S)
                error = _error(reply.data)
                assert error.code in set(ErrorCode), error
        assert isinstance(await client.state(nc), ClusterState)
        assert isinstance(await client.models(nc), ModelsReply)
    finally:
        await service.stop()
