"""Stopping `llorch up` as users do: Ctrl-C in its terminal, or a signal to `llorch up` alone.

The whole stack stops (server, orchestrator, pool, workers), exits 0 (a stop that was asked
for is a success), logs no error, and a running job's client hears how its job ended.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from llorch_common import client
from llorch_common.connect import Credentials
from llorch_orch.natsserver import free_port
from schemas import Error, ErrorCode, Event, GenerateRequest, Token

LLORCH = [sys.executable, "-m", "llorch_orch"]
# greedy, so the job cannot end by chance before the stop
LONG = GenerateRequest(
    model="smollm2-135m", prompt="Write a long story about a dragon:", max_tokens=1500,
    temperature=0.0, seed=1,
)  # fmt: skip


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int]]:
    """`llorch up` as a terminal's foreground job: the leader of its own process group."""
    port = free_port()
    proc = subprocess.Popen(
        [*LLORCH, "up", "--data-dir", str(tmp_path), "--port", str(port), "--cpu", *_http()],
        stderr=subprocess.PIPE,
        text=True,
        process_group=0,
    )
    try:
        assert proc.stderr is not None
        lines: list[str] = []
        while not any("llorch is up" in line for line in lines):
            line = proc.stderr.readline()  # blocks until the next line (or the end)
            assert line, "".join(lines) + proc.stderr.read()
            lines.append(line)
        yield proc, port
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


@pytest.mark.parametrize(
    ("whom", "sig"),
    [("group", signal.SIGINT), ("up", signal.SIGINT), ("up", signal.SIGTERM)],
    ids=["ctrl-c", "sigint-to-up", "sigterm-to-up"],
)
async def test_stop_ends_every_process_and_the_running_job(
    up: tuple[subprocess.Popen[str], int], tmp_path: Path, whom: str, sig: signal.Signals
) -> None:
    proc, port = up
    seed = Credentials(nkey_seed_file=tmp_path / "creds" / "client-cli.nk")
    nc = await client.connect(f"nats://127.0.0.1:{port}", seed, allow_reconnect=False)
    events: list[Event] = []
    first_token = asyncio.Event()

    async def run() -> None:
        async for event in client.stream(nc, LONG, stall_s=60):
            events.append(event)
            if isinstance(event, Token):
                first_token.set()

    job = asyncio.create_task(run())
    waiting = asyncio.ensure_future(first_token.wait())
    await asyncio.wait({waiting, job}, timeout=120, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    assert first_token.is_set(), events
    children = _descendants(proc.pid)
    assert len(children) >= 4, children  # nats-server, orchestrator, pool, worker

    started = time.monotonic()
    if whom == "group":
        os.killpg(proc.pid, sig)  # what the terminal does on Ctrl-C
    else:
        proc.send_signal(sig)
    code = await asyncio.to_thread(proc.wait, 60)  # generous: a hang fails, slowness does not
    print(f"llorch up stopped in {time.monotonic() - started:.2f}s")
    await asyncio.wait_for(job, 60)
    await nc.close()

    assert code == 0
    assert [pid for pid in children if _alive(pid)] == []
    end = events[-1]
    assert isinstance(end, Error), events[-3:]
    assert end.code == ErrorCode.WORKER_LOST and end.retriable, end
    for log in (tmp_path / "logs").iterdir():
        text = log.read_text(errors="replace")
        assert "Error" not in text and "Traceback" not in text, f"{log.name}:\n{text[-3000:]}"


def _descendants(root: int) -> list[int]:
    """Every process below `root` (workers too, though they run in sessions of their own)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


def _alive(pid: int) -> bool:
    try:
        stat = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _http() -> list[str]:
    """`llorch up`'s HTTP edge on a free port (its default, 8000, may be taken)."""
    return ["--http", f"127.0.0.1:{free_port()}"]
