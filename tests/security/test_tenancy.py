"""Tenancy on a real nats-server with identities: two clients' jobs stay apart, the admin (an
operator) sees and acts on all of them, and a client cannot reach the batch API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llorch_common import client
from llorch_common.connect import nkey_public
from llorch_common.local import seed_file
from llorch_orch import natsconf
from llorch_orch.cli import build_parser
from llorch_orch.core import Core, OrchConfig
from llorch_orch.core.tenancy import Tenancy
from llorch_orch.service import OrchestratorService
from llorch_orch.stack import Stack
from schemas import (
    Ack,
    CancelReply,
    ClusterState,
    End,
    Error,
    ErrorCode,
    Execute,
    GenerateRequest,
    Heartbeat,
    JobInfo,
    JobStatus,
    Started,
    Subjects,
    WorkerCancel,
    decoder,
    encode,
)
from tests.orch.factory import cpu, model, winfo
from tests.security.conftest import WAIT_S, Conn, ConnectAs, Secured

S = Subjects()
WORKERS = ("w1", "w2", "w3")
_execute, _cancel = decoder(Execute), decoder(WorkerCancel)
_event = decoder(Started | End | Error)


@dataclass
class Workers:
    """Pool p1's workers, played by one connection of its worker identity: each execute is
    accepted and started; a cancel ends its job with CANCELLED; `finish` ends one normally."""

    nc: Client
    executes: dict[str, Execute] = field(default_factory=dict)
    started: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    cancelled: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def serve(self) -> None:
        await self.nc.subscribe(f"{S.prefix}.worker.*.execute", cb=self._on_execute)
        await self.nc.subscribe(f"{S.prefix}.worker.*.cancel", cb=self._on_cancel)
        await self.nc.flush()

    async def _on_execute(self, msg: Msg) -> None:
        execute = _execute(msg.data)
        worker_id = msg.subject.split(".")[-2]
        self.executes[execute.job_id] = execute
        await msg.respond(encode(Ack()))
        started = Started(seq=execute.seq, job_id=execute.job_id, worker_id=worker_id,
                          model=execute.model, seed=execute.seed)  # fmt: skip
        await self.nc.publish(execute.stream, encode(started))
        await self._status(execute, worker_id, "started")
        self.started.put_nowait(execute.job_id)

    async def _on_cancel(self, msg: Msg) -> None:
        execute = self.executes[_cancel(msg.data).job_id]
        await msg.respond(encode(Ack()))
        error = Error(code=ErrorCode.CANCELLED, message="cancelled", seq=execute.seq + 1,
                      job_id=execute.job_id)  # fmt: skip
        await self.nc.publish(execute.stream, encode(error))
        await self._status(execute, msg.subject.split(".")[-2], "failed", ErrorCode.CANCELLED)
        self.cancelled.put_nowait(execute.job_id)

    async def finish(self, job_id: str) -> None:
        execute = self.executes[job_id]
        end = End(seq=execute.seq + 1, job_id=job_id, finish_reason="length", tokens_in=1,
                  tokens_out=1, ttft_ms=1.0, total_ms=1.0)  # fmt: skip
        await self.nc.publish(execute.stream, encode(end))

    async def _status(
        self, execute: Execute, worker_id: str, state: str, code: ErrorCode | None = None
    ) -> None:
        status = JobStatus(job_id=execute.job_id, worker_id=worker_id, state=state,  # type: ignore[arg-type]
                           seq=execute.seq + (state != "started"), code=code)  # fmt: skip
        await self.nc.publish(S.job_status(execute.job_id), encode(status))


@dataclass
class Cluster:
    workers: Workers
    streams: dict[str, Subscription] = field(default_factory=dict)

    async def run(self, conn: Conn, job_id: str) -> None:
        """`conn` submits a job; returns once a worker has started it."""
        inbox = conn.nc.new_inbox()
        self.streams[job_id] = await conn.nc.subscribe(inbox)
        request = GenerateRequest(model="m", prompt="hi", max_tokens=8, job_id=job_id)
        await conn.nc.publish(S.generate, encode(request), reply=inbox)
        async with asyncio.timeout(WAIT_S):
            assert await self.workers.started.get() == job_id

    async def terminal(self, job_id: str) -> End | Error:
        while not isinstance(event := _event((await self.streams[job_id].next_msg(WAIT_S)).data),
                             End | Error):  # fmt: skip
            assert isinstance(event, Started)
        return event


def admin_key(secured: Secured) -> str:
    return nkey_public(seed_file(secured.creds_dir, "admin"))


@pytest.fixture
async def cluster(secured: Secured, connect_as: ConnectAs) -> AsyncIterator[Cluster]:
    """The orchestrator as `llorch up` runs it (its identity, the admin as operator), pool p1
    with three idle workers of model `m`."""
    orch = await connect_as("orchestrator")
    tenancy = Tenancy.of(secured.credentials("orchestrator").inbox, [admin_key(secured)])
    service = OrchestratorService(orch.nc, Core(OrchConfig()), tenancy=tenancy)
    await service.start()
    workers = Workers((await connect_as("worker-p1")).nc)
    await workers.serve()
    pool, admin = await connect_as("pool-p1"), await connect_as("admin")
    hb = Heartbeat(pool_id="p1", ts=time.time(), seq=1, interval_s=60.0, devices=[cpu()],
                   workers=[winfo(w) for w in WORKERS], models=[model()])  # fmt: skip
    await pool.nc.publish(S.heartbeat("p1"), encode(hb))
    await pool.nc.flush()
    for _ in range(200):  # asked, not slept on: until the orchestrator lists the workers
        state = await client.state(admin.nc)
        assert isinstance(state, ClusterState), state
        if state.pools and len(state.pools[0].workers) == len(WORKERS):
            break
    else:
        raise AssertionError("the orchestrator never adopted the workers")
    yield Cluster(workers)
    await service.stop()


def running(state: ClusterState | Error) -> set[str]:
    assert isinstance(state, ClusterState), state
    return {j.job_id for j in state.running}


async def test_clients_see_and_cancel_only_their_own_jobs(
    cluster: Cluster, connect_as: ConnectAs
) -> None:
    alice, bob = await connect_as("client-alice"), await connect_as("client-bob")
    admin = await connect_as("admin")
    for conn, job_id in ((alice, "a1"), (alice, "a2"), (bob, "b1")):
        await cluster.run(conn, job_id)

    assert running(await client.state(bob.nc)) == {"b1"}
    assert running(await client.state(alice.nc)) == {"a1", "a2"}
    assert running(await client.state(admin.nc)) == {"a1", "a2", "b1"}  # the operator

    # Another's job answers exactly as an unknown id does.
    unknown = Error(code=ErrorCode.NOT_FOUND, message="no job a9")
    assert await client.job(bob.nc, "a9") == unknown
    not_found = Error(code=ErrorCode.NOT_FOUND, message="no job a1")
    assert await client.job(bob.nc, "a1") == not_found
    assert await client.cancel(bob.nc, "a1") == not_found

    info = await client.job(alice.nc, "a1")
    assert isinstance(info, JobInfo) and info.state == "running"
    assert await client.cancel(alice.nc, "a2") == CancelReply(job_id="a2", outcome="cancelled")
    async with asyncio.timeout(WAIT_S):  # the first cancel a worker hears: bob's never went out
        assert await cluster.workers.cancelled.get() == "a2"
    terminal = await cluster.terminal("a2")
    assert isinstance(terminal, Error) and terminal.code == ErrorCode.CANCELLED

    info = await client.job(admin.nc, "b1")
    assert isinstance(info, JobInfo) and info.state == "running"
    assert await client.cancel(admin.nc, "b1") == CancelReply(job_id="b1", outcome="cancelled")
    async with asyncio.timeout(WAIT_S):
        assert await cluster.workers.cancelled.get() == "b1"

    await cluster.workers.finish("a1")  # alice's job runs to its end
    assert isinstance(await cluster.terminal("a1"), End)
    assert cluster.workers.cancelled.empty()


async def test_a_client_cannot_reach_the_batch_api(connect_as: ConnectAs) -> None:
    alice = await connect_as("client-alice")
    for subject in (f"{S.prefix}.api.batch.cancel", f"{S.prefix}.api.batch.etl.cancel",
                    f"{S.prefix}.api.batch.etl.status"):  # fmt: skip
        await alice.nc.publish(subject, b"{}")
        await alice.denied("Publish", subject)


def test_llorch_up_makes_its_admin_the_operator(tmp_path: Path) -> None:
    identities = natsconf.ensure_seeds(tmp_path / "creds", natsconf.deployment(["p1"]))
    admin = next(i for i in identities if i.name == "admin")
    stack = Stack(tmp_path, "nats://127.0.0.1:1", S.prefix, creds_dir=tmp_path / "creds")
    assert stack.operator_args() == ["--operator", admin.public_key]
    assert Stack(tmp_path, "nats://127.0.0.1:1", S.prefix).operator_args() == []  # open server
    args = build_parser().parse_args(["orch", *stack.operator_args(), "--operator", "bob"])
    assert args.operator == [admin.public_key, "bob"]
