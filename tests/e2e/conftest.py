"""End-to-end fixtures: the real orchestrator and pool processes (and the real workers they
spawn) against the real nats-server fixture."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from llorch_common import client
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack
from schemas import (
    ClusterState,
    End,
    Error,
    Event,
    GenerateRequest,
    Heartbeat,
    Subjects,
    Token,
    decoder,
)

MODEL = "smollm2-135m"
HEARTBEAT_S = 0.5  # fast heartbeats keep loss detection (3 intervals) quick in tests
_heartbeat = decoder(Heartbeat)


@dataclass
class Cluster:
    stack: Stack
    nc: Client
    subjects: Subjects = field(default_factory=Subjects)
    elsewhere: list[Stack] = field(default_factory=list)  # pools on other servers of a cluster

    async def run(self, **fields: object) -> list[Event]:
        """All events of one job, terminal included."""
        fields.setdefault("model", MODEL)
        fields.setdefault("max_tokens", 8)
        request = GenerateRequest(**fields)  # type: ignore[arg-type]
        return [e async for e in client.stream(self.nc, request, self.subjects, stall_s=60)]

    async def state(self) -> ClusterState:
        reply = await client.state(self.nc, self.subjects)
        assert isinstance(reply, ClusterState), reply
        return reply

    async def wait_for_pools(self, *pool_ids: str) -> None:
        await self.until(lambda s: set(pool_ids) <= {p.pool_id for p in s.pools if p.alive})

    async def until(self, predicate: Callable[[ClusterState], bool], timeout: float = 60) -> None:
        """Until the orchestrator's view satisfies `predicate`, re-checked on every heartbeat
        (or every heartbeat interval when no pool is left to send one)."""
        sub = await self.nc.subscribe(self.subjects.heartbeat_all)
        try:
            async with asyncio.timeout(timeout):
                while True:
                    with contextlib.suppress(nats.errors.NoRespondersError):  # orch starting
                        if predicate(await self.state()):
                            return
                    with contextlib.suppress(nats.errors.TimeoutError):
                        await sub.next_msg(timeout=HEARTBEAT_S)
        finally:
            await sub.unsubscribe()

    def spawn_pool(self, pool_id: str, *extra: str, url: str | None = None) -> None:
        """A pool (with its identity when the server has auth) on the stack's server, or on
        `url`: another server of a NATS cluster, or a list of them."""
        stack = self.stack
        if url is not None:
            stack = Stack(stack.data_dir, url, stack.prefix, creds_dir=stack.creds_dir)
            self.elsewhere.append(stack)
        stack.spawn(
            f"pool-{pool_id}",
            ["llorch_pool", "serve", "--pool-id", pool_id, "--data-dir", str(stack.data_dir),
             "--cpu", "--heartbeat-interval", str(HEARTBEAT_S), *extra,
             *stack.seed_args(f"pool-{pool_id}"),
             *stack.seed_args(f"worker-{pool_id}", "--worker-nkey-seed")],
        )  # fmt: skip


async def worker_pid(cluster: Cluster, worker_id: str) -> int:
    """The pool reports pids in its heartbeats; the orchestrator's view does not need them."""
    sub = await cluster.nc.subscribe(cluster.subjects.heartbeat_all)
    try:
        while True:
            hb = _heartbeat((await sub.next_msg(timeout=10)).data)
            for w in hb.workers:
                if w.worker_id == worker_id and w.pid:
                    return w.pid
    finally:
        await sub.unsubscribe()


def text_of(events: list[Event]) -> str:
    return "".join(e.text for e in events if isinstance(e, Token))


def terminal(events: list[Event]) -> End | Error:
    ends = [e for e in events if isinstance(e, End | Error)]
    assert len(ends) == 1 and events[-1] is ends[0], events
    return ends[0]


ClusterFactory = Callable[..., Awaitable[Cluster]]


@pytest.fixture
async def make_cluster(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """make_cluster(config_toml="", pools=("p1",), pool_args=(), orch_args=(), slots=1) -> a
    running Cluster. One slot per worker unless asked: most tests here watch one job wait for
    another."""
    async with cluster_factory(nats_server.url, tmp_path) as make:
        yield make


@contextlib.asynccontextmanager
async def cluster_factory(
    url: str, tmp_path: Path, creds_dir: Path | None = None, client_url: str | None = None
) -> AsyncIterator[ClusterFactory]:
    """make_cluster's factory on the server(s) at `url`; with `creds_dir` (natsconf's seeds)
    each process connects as its identity and the test's client as the admin, on `client_url`
    if given (another server of a cluster)."""
    stacks: list[Stack] = []
    made: list[Cluster] = []
    clients: list[Client] = []

    async def make(
        config_toml: str = "",
        pools: tuple[str, ...] = ("p1",),
        pool_args: tuple[str, ...] = (),
        orch_args: tuple[str, ...] = (),
        slots: int = 1,
    ) -> Cluster:
        data_dir = tmp_path / f"data{len(stacks)}"
        (data_dir / "logs").mkdir(parents=True)
        config = data_dir / "orch.toml"
        config.write_text(config_toml)
        stack = Stack(data_dir, url, Subjects().prefix, creds_dir=creds_dir)
        stacks.append(stack)
        orch = ["llorch_orch", "orch", "--config", str(config), "--slots", str(slots), *orch_args]
        orch += [*stack.seed_args("orchestrator"), *stack.operator_args()]
        stack.spawn("orchestrator", orch)
        nc = await client.connect(client_url or url, stack.credentials("admin"))
        clients.append(nc)
        cluster = Cluster(stack, nc)
        made.append(cluster)
        for pool_id in pools:
            cluster.spawn_pool(pool_id, *pool_args)
        await cluster.wait_for_pools(*pools)
        return cluster

    try:
        yield make
    finally:
        for nc in clients:
            await nc.close()
        for stack in [*stacks, *(s for c in made for s in c.elsewhere)]:
            stack.stop()
