"""A real `python -m llorch_pool serve` child per test, and a heartbeat listener for it."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from llorch_orch.natsserver import NatsServer
from schemas import Heartbeat, Subjects, WorkerInfo, decoder

REPO = Path(__file__).resolve().parents[2]
POOL_ID = "testpool"
WAIT_S = 120.0  # liveness bound only; everything is awaited as an event
_decode_heartbeat = decoder(Heartbeat)


@dataclass
class Pool:
    proc: asyncio.subprocess.Process
    data_dir: Path
    log_file: Path
    beats: asyncio.Queue[Heartbeat]
    sub: Subscription
    subjects: Subjects = field(default_factory=Subjects)

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    async def next_beat(self) -> Heartbeat:
        return await asyncio.wait_for(self.beats.get(), WAIT_S)

    async def beat_where(self, predicate: Callable[[Heartbeat], bool]) -> Heartbeat:
        while True:
            beat = await self.next_beat()
            if predicate(beat):
                return beat

    async def worker_where(
        self, worker_id: str, predicate: Callable[[WorkerInfo], bool]
    ) -> WorkerInfo:
        def match(beat: Heartbeat) -> bool:
            return any(w.worker_id == worker_id and predicate(w) for w in beat.workers)

        beat = await self.beat_where(match)
        return next(w for w in beat.workers if w.worker_id == worker_id)

    async def stop(self) -> int:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.proc.wait(), WAIT_S)


StartPool = Callable[..., Awaitable[Pool]]


@pytest.fixture
async def start_pool(
    nats_server: NatsServer, nc: Client, tmp_path: Path
) -> AsyncIterator[StartPool]:
    pools: list[Pool] = []

    async def start(*extra: str, interval: float = 60.0, data_dir: Path | None = None) -> Pool:
        """Start a pool; returns once its first heartbeat has been seen (and consumed)."""
        data = data_dir or tmp_path / "pooldata"
        beats: asyncio.Queue[Heartbeat] = asyncio.Queue()

        async def on_beat(msg: Msg) -> None:
            beats.put_nowait(_decode_heartbeat(msg.data))

        sub = await nc.subscribe(Subjects().heartbeat(POOL_ID), cb=on_beat)
        log_file = tmp_path / f"pool{len(pools)}.log"
        with log_file.open("wb") as log:
            proc = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "llorch_pool", "serve", "--nats-url", nats_server.url),
                *("--pool-id", POOL_ID, "--data-dir", str(data)),
                *("--heartbeat-interval", str(interval), "--cpu", *extra),
                cwd=REPO,
                stdout=log,
                stderr=log,
            )
        pool = Pool(proc, data, log_file, beats, sub)
        pools.append(pool)
        first = await pool.next_beat()
        assert first.seq == 1, pool.log()
        return pool

    yield start
    for pool in pools:  # graceful, so the pool drains any worker a test left running
        try:
            await pool.stop()
        except TimeoutError:
            pool.proc.kill()
            await pool.proc.wait()
