"""A NATS cluster of three real nats-server processes on this host, and the e2e stack on it.

    async def test_x(nats_cluster: NatsCluster) -> None:
        nc = await client.connect(nats_cluster.url_list, nats_cluster.credentials("admin"))
        nats_cluster.kill(1)            # SIGKILL server 1
        await nats_cluster.restart(1)   # back, in the cluster, JetStream current

`nats_cluster` (function scope): servers 0, 1, 2 on free ports, each with its config from
`natsconf.write_cluster` (what `llorch nats-config --node` writes: routes to the others with
their secret, JetStream in a store dir of its own, the accounts of a deployment, so auth is on
as under `llorch up`) and a monitoring port. The fixture returns once every server routes to
the others, JetStream has a meta leader and every server is current.

- `urls`: the client URL of each server, by index; `url_list`: the three comma-separated (a
  `--nats-url`); `creds_dir`: the seeds of the identities `orchestrator`, `admin`, `pool-pN`
  and `worker-pN` (N = 1, 2, 3), `client-cli`, `producer-cli`; `credentials(identity)`.
- `kill(i)`: SIGKILL server i; returns once it is dead. `restart(i)`: start it again (same
  ports, config and store); returns once the cluster is whole again as above.
- `node_of(name)`: the index of the server a client named `name` (`nats.connect(name=…)`:
  `llorch-pool-<id>`, `llorch-worker-<id>`, …) is connected to, once it is connected.

`make_cluster` here is the e2e one (tests/e2e/conftest.py) on this cluster: the orchestrator
on server 0, the test's client on server 2, pools where `Cluster.spawn_pool(..., url=…)` says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.js import JetStreamContext

from llorch_common.connect import Credentials
from llorch_common.local import seed_file
from llorch_orch import natsconf
from llorch_orch.natsserver import NatsServer, free_port
from schemas import Subjects
from tests.e2e.conftest import ClusterFactory, cluster_factory

SIZE = 3
POOLS = tuple(f"p{i}" for i in range(1, SIZE + 1))
CLIENT = 2  # the server of make_cluster's client (its orchestrator's is 0)
FORMED_S = 60.0  # the cluster not whole again within this long fails the test
_POLL_S = 0.05  # the monitoring endpoint tells no one of a change: it is asked again


@dataclass
class NatsCluster:
    nodes: tuple[natsconf.Node, ...]
    configs: list[Path]
    monitor_ports: list[int]
    creds_dir: Path
    stores: Path
    logs: Path
    servers: list[NatsServer | None] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    @property
    def url_list(self) -> str:
        return ",".join(self.urls)

    def credentials(self, identity: str) -> Credentials:
        return Credentials(nkey_seed_file=seed_file(self.creds_dir, identity))

    def start(self, i: int) -> None:
        node = self.nodes[i]
        monitor = ["-m", str(self.monitor_ports[i])]
        log = self.logs / f"nats-{node.name}.log"
        server = NatsServer.start_node(
            self.configs[i], node, self.stores / node.name, log, *monitor
        )
        self.servers[i] = server

    def kill(self, i: int) -> None:
        server = self.servers[i]
        assert server is not None, f"server {i} is not running"
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait()
        self.servers[i] = None

    async def restart(self, i: int) -> None:
        self.start(i)
        await self.formed()

    def stop(self) -> None:
        for server in self.servers:
            if server is not None:
                server.stop()

    async def formed(self) -> None:
        """Until every running server routes to the others and is current in a JetStream
        meta group that has a leader."""
        async with asyncio.timeout(FORMED_S):
            while not all(await asyncio.gather(*map(self._whole_at, self._running()))):
                await asyncio.sleep(_POLL_S)

    async def node_of(self, name: str) -> int:
        async with asyncio.timeout(FORMED_S):
            while True:
                for i in self._running():
                    conns = (await self._monitor(i, "connz?limit=1024"))["connections"] or []
                    if any(c.get("name") == name for c in conns):
                        return i
                await asyncio.sleep(_POLL_S)

    def _running(self) -> list[int]:
        return [i for i, server in enumerate(self.servers) if server is not None]

    async def _whole_at(self, i: int) -> bool:
        """Server i routes to every other running one, knows the meta leader, and says it is
        healthy (/healthz: 503 until its JetStream is current)."""
        others = {self.nodes[j].name for j in self._running()} - {self.nodes[i].name}
        routes = (await self._monitor(i, "routez"))["routes"] or []
        meta = (await self._monitor(i, "jsz")).get("meta_cluster") or {}
        if not others <= {r.get("remote_name") for r in routes} or not meta.get("leader"):
            return False
        try:
            await self._monitor(i, "healthz")
        except urllib.error.HTTPError:
            return False
        return True

    async def _monitor(self, i: int, path: str) -> dict[str, Any]:
        url = f"http://{self.nodes[i].host}:{self.monitor_ports[i]}/{path}"
        return await asyncio.to_thread(_get_json, url)


async def placed(
    js: JetStreamContext, stream: str, servers: int, consumer: str | None = None
) -> None:
    """Until `stream` (or its `consumer`) is held by `servers` servers, all current, one of
    them its leader (a stream's config says its replicas at once; its group follows)."""
    async with asyncio.timeout(FORMED_S):
        while True:
            if consumer is None:
                group = (await js.stream_info(stream)).cluster
            else:
                group = (await js.consumer_info(stream, consumer)).cluster
            peers = (group.replicas or []) if group is not None else []
            if (
                group
                and group.leader
                and len(peers) == servers - 1
                and all(p.current for p in peers)
            ):
                return
            await asyncio.sleep(_POLL_S)


def _get_json(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        found: dict[str, Any] = json.load(reply)
        return found


@contextlib.asynccontextmanager
async def running_cluster(out: Path) -> AsyncIterator[NatsCluster]:
    """Three servers on free ports, their configs, seeds, stores and logs under `out`; whole
    when it yields, stopped after (`bench/failover.py` runs one too)."""
    host = "127.0.0.1"
    nodes = tuple(
        natsconf.Node(f"n{i}", host, free_port(host), free_port(host)) for i in range(SIZE)
    )
    configs = natsconf.write_cluster(
        out, Subjects(), nodes, POOLS, clients=["cli"], producers=["cli"]
    )
    (out / "logs").mkdir()
    cluster = NatsCluster(
        nodes, configs, [free_port(host) for _ in nodes], out / "creds", out / "jetstream",
        out / "logs", [None] * SIZE,
    )  # fmt: skip
    try:
        for i in range(SIZE):
            cluster.start(i)
        await cluster.formed()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    async with running_cluster(tmp_path / "nats") as cluster:
        yield cluster


@pytest.fixture
async def make_cluster(nats_cluster: NatsCluster, tmp_path: Path) -> AsyncIterator[ClusterFactory]:
    """The e2e factory on the cluster: orchestrator on server 0, the test's client on 2."""
    urls = nats_cluster.urls
    async with cluster_factory(urls[0], tmp_path, nats_cluster.creds_dir, urls[CLIENT]) as make:
        yield make
