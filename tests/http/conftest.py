"""One `llorch up --http` stack for the whole module (starting one costs seconds of the CI's
two cores), with an API key, a queue of one and one worker per model, so that a full queue
(429) can be made with three requests. Its catalog also holds `bare`, the bundled model
without its chat template, and `broken`, the bundled model cut short (its metadata whole, its
tensors not), which no worker can load."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import openai
import pytest

from llorch_orch.natsserver import free_port
from llorch_pool import catalog

LLORCH = [sys.executable, "-m", "llorch_orch"]
MODEL = "smollm2-135m"
BARE = "bare"  # the same weights, no chat template
BROKEN = "broken"  # the same file cut short: every worker for it fails to load
BROKEN_BYTES = 16 << 20  # its metadata (the vocabulary too) sits before this
KEY = "sk-test-0123456789"
WAIT_S = 60.0
POLL_S = 0.05  # how often a wait re-reads the dashboard's state
T = TypeVar("T")


@dataclass
class Edge:
    url: str  # http://127.0.0.1:PORT/
    data_dir: Path
    nats_url: str

    def openai(self, key: str | None = KEY, **options: Any) -> openai.OpenAI:
        options.setdefault("max_retries", 0)  # a test sees every answer as it is
        return openai.OpenAI(base_url=f"{self.url}v1", api_key=key or "none", **options)

    def state(self) -> dict[str, Any]:
        status, body = get(f"{self.url}dashboard/state", {"authorization": f"Bearer {KEY}"})
        assert status == 200, body
        return body

    def until(self, predicate: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The dashboard's state once `predicate` holds (the cluster's own view, polled)."""
        return until(self.state, predicate)

    def models(self) -> set[str]:
        return {m.id for m in self.openai().models.list()}


def until(read: Callable[[], T], predicate: Callable[[T], bool]) -> T:
    """What `read` returns once `predicate` holds of it, read again every POLL_S."""
    deadline = time.monotonic() + WAIT_S
    while True:
        value = read()
        if predicate(value):
            return value
        assert time.monotonic() < deadline, f"not within {WAIT_S}s: {value}"
        time.sleep(POLL_S)


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET a JSON answer: (status, body), an error status included."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


@pytest.fixture(scope="module")
def edge(
    tmp_path_factory: pytest.TempPathFactory, templateless_model_path: Path, model_path: Path
) -> Iterator[Edge]:
    data_dir = tmp_path_factory.mktemp("http")
    broken = data_dir / "models" / "broken.gguf"
    broken.parent.mkdir()
    with model_path.open("rb") as whole:
        broken.write_bytes(whole.read(BROKEN_BYTES))
    keys = data_dir / "keys.txt"
    keys.write_text(f"# the test's key\n{KEY}\n")
    port, http_port = free_port(), free_port()
    up = subprocess.Popen(
        [*LLORCH, "up", "--cpu", "--data-dir", str(data_dir), "--port", str(port),
         "--http", f"127.0.0.1:{http_port}", "--api-key-file", str(keys),
         "--queue-capacity", "1", "--max-workers", "1", "--slots", "1",
         "--allow-model-dir", str(templateless_model_path.parent),
         "--allow-model-dir", str(broken.parent)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert up.stderr is not None
    try:
        lines = [up.stderr.readline() for _ in range(2)]  # blocks until up (or failed)
        assert "llorch is up" in lines[0], "".join(lines) + up.stderr.read()
        assert f"dashboard on http://127.0.0.1:{http_port}/" in lines[1], lines
        edge = Edge(f"http://127.0.0.1:{http_port}/", data_dir, f"nats://127.0.0.1:{port}")
        catalog.add_model(data_dir, BARE, templateless_model_path)
        catalog.add_model(data_dir, BROKEN, broken)
        # the pool's next heartbeat lists them
        until(edge.models, lambda names: {BARE, BROKEN} <= names)
        yield edge
    finally:
        up.send_signal(signal.SIGINT)
        try:
            up.wait(timeout=60)
        finally:
            if up.poll() is None:
                up.kill()
                up.wait()
            up.stderr.close()
