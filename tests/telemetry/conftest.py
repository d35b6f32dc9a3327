"""A traced cluster: nats-server, orchestrator and pool processes (and the worker the pool
spawns), every one exporting spans over OTLP/HTTP to a receiver inside the test, logging JSON
lines, and the orchestrator and pool serving Prometheus metrics on ports of their own."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import nats
import pytest

from llorch_orch.natsserver import NatsServer, free_port
from llorch_orch.stack import Stack
from schemas import Subjects
from tests.e2e.conftest import HEARTBEAT_S, Cluster
from tests.telemetry import otlp


@dataclass
class Traced:
    cluster: Cluster
    receiver: otlp.Receiver
    orch_metrics: str  # Prometheus URL of the orchestrator
    pool_metrics: str  # and of the pool

    @property
    def logs(self) -> Path:
        return self.cluster.stack.data_dir / "logs"


@pytest.fixture
def receiver() -> Iterator[otlp.Receiver]:
    rx = otlp.start()
    yield rx
    rx.server.shutdown()
    rx.server.server_close()


@pytest.fixture
async def traced(
    nats_server: NatsServer,
    tmp_path: Path,
    receiver: otlp.Receiver,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Traced]:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_SDK_DISABLED", "OTEL_SERVICE_NAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)  # children inherit
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")  # export within 50 ms of a span's end
    monkeypatch.setenv("LLORCH_LOG_FORMAT", "json")
    (tmp_path / "logs").mkdir()
    stack = Stack(data_dir=tmp_path, nats_url=nats_server.url, prefix=Subjects().prefix)
    orch_port, pool_port = free_port(), free_port()
    stack.spawn("orchestrator", ["llorch_orch", "orch", "--metrics-port", str(orch_port)])
    stack.spawn("pool-p1", ["llorch_pool", "serve", "--pool-id", "p1", "--data-dir", str(tmp_path),
                            "--cpu", "--heartbeat-interval", str(HEARTBEAT_S),
                            "--metrics-port", str(pool_port)])  # fmt: skip
    nc = await nats.connect(nats_server.url)
    cluster = Cluster(stack, nc)
    try:
        await cluster.wait_for_pools("p1")
        yield Traced(
            cluster,
            receiver,
            f"http://127.0.0.1:{orch_port}/metrics",
            f"http://127.0.0.1:{pool_port}/metrics",
        )
    finally:
        await nc.close()
        stack.stop()
