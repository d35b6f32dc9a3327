"""A real nats-server started with the config `llorch_orch.natsconf` generates, and clients
that connect as one of its identities and record the permission errors the server sends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from llorch_common.connect import Credentials
from llorch_orch import natsconf
from llorch_orch.natsserver import NatsServer
from schemas import Subjects

POOLS = ("p1", "p2")
CLIENTS = ("alice", "bob")
PRODUCERS = ("etl",)
WAIT_S = 5.0


@dataclass
class Secured:
    server: NatsServer
    creds_dir: Path

    def credentials(self, identity: str) -> Credentials:
        return Credentials(nkey_seed_file=natsconf.seed_file(self.creds_dir, identity))


@dataclass
class Conn:
    """One identity's connection and the permission violations reported to it."""

    nc: Client
    denials: asyncio.Queue[str] = field(default_factory=asyncio.Queue)

    async def denied(self, verb: str, subject: str) -> None:
        """Until the server reports `verb` ("Publish" / "Subscription") to `subject` denied."""
        expected = f'permissions violation for {verb} to "{subject}"'.lower()
        async with asyncio.timeout(WAIT_S):
            while expected not in (text := (await self.denials.get()).lower()):
                pass
        assert expected in text


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Secured]:
    config = natsconf.write_deployment(tmp_path, Subjects(), POOLS, CLIENTS, PRODUCERS)
    server = NatsServer.start(tmp_path / "jetstream", config=config)
    yield Secured(server, tmp_path / "creds")
    server.stop()


ConnectAs = Callable[[str], Awaitable[Conn]]


@pytest.fixture
async def connect_as(secured: Secured) -> AsyncIterator[ConnectAs]:
    conns: list[Conn] = []

    async def connect(identity: str) -> Conn:
        denials: asyncio.Queue[str] = asyncio.Queue()

        async def on_error(exc: Exception) -> None:
            denials.put_nowait(str(exc))

        opts = secured.credentials(identity).connect_options()
        nc = await nats.connect(
            secured.server.url, error_cb=on_error, max_reconnect_attempts=0, **opts
        )
        conns.append(Conn(nc, denials))
        return conns[-1]

    yield connect
    for conn in conns:
        await conn.nc.close()
