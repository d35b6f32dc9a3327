"""A real worker process on the bundled model, spawned exactly as the pool manager does."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
from nats.aio.client import Client

from llorch_orch.natsserver import NatsServer
from schemas import (
    Ack,
    End,
    Error,
    Event,
    Execute,
    JobStatus,
    Subjects,
    Token,
    WorkerFailed,
    WorkerReady,
    decoder,
    encode,
)

MODEL = "smollm2"
N_CTX = 512
WAIT = 60.0  # upper bound on any single wait; a healthy run never gets near it
SUBJECTS = Subjects()
decode_event = decoder(Event)
decode_status = decoder(JobStatus)
decode_ready = decoder(WorkerReady | WorkerFailed)
decode_reply = decoder(Ack | Error)


@dataclass
class WorkerProc:
    url: str
    worker_id: str
    proc: subprocess.Popen[bytes]
    announced: WorkerReady | WorkerFailed


def worker_argv(url: str, worker_id: str, model_path: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "llorch_worker",
        "--nats-url", url, "--worker-id", worker_id, "--pool-id", "pool-1",
        "--model", MODEL, "--model-path", str(model_path), "--n-ctx", str(N_CTX),
        "--device", "0", "--device-kind", "cpu", "--threads", "2", *extra,
    ]  # fmt: skip


async def spawn_worker_async(url: str, worker_id: str, model_path: Path, *extra: str) -> WorkerProc:
    """Start the worker and return once it announced itself (ready or failed)."""
    nc = await nats.connect(url)
    try:
        sub = await nc.subscribe(SUBJECTS.ready(worker_id), max_msgs=1)
        await nc.flush()
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.Popen(worker_argv(url, worker_id, model_path, *extra), env=env)
        msg = await sub.next_msg(timeout=WAIT)
        return WorkerProc(url, worker_id, proc, decode_ready(msg.data))
    finally:
        await nc.close()


def spawn_worker(url: str, worker_id: str, model_path: Path, *extra: str) -> WorkerProc:
    return asyncio.run(spawn_worker_async(url, worker_id, model_path, *extra))


def stop_worker(worker: WorkerProc) -> None:
    if worker.proc.poll() is None:
        worker.proc.send_signal(signal.SIGTERM)
        try:
            worker.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            worker.proc.kill()
            worker.proc.wait()


@pytest.fixture(scope="module")
def module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    server = NatsServer.start(tmp_path_factory.mktemp("js"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def worker(module_server: NatsServer, model_path: Path) -> Iterator[WorkerProc]:
    """One worker for a whole test module: loads take well under a second, but add up."""
    w = spawn_worker(module_server.url, "w-mod", model_path, "--progress-interval", "0.05")
    assert isinstance(w.announced, WorkerReady), w.announced
    yield w
    stop_worker(w)
    assert w.proc.returncode == 0


@pytest.fixture
async def client(module_server: NatsServer) -> AsyncIterator[Client]:
    nc = await nats.connect(module_server.url)
    yield nc
    await nc.close()


def make_execute(job_id: str, stream: str, **params: Any) -> Execute:
    fields: dict[str, Any] = dict(
        model=MODEL, prompt="The capital of France is", max_tokens=16, temperature=0.0,
        top_p=0.95, top_k=40, seed=42,
    )  # fmt: skip
    fields.update(params)
    return Execute(job_id=job_id, stream=stream, **fields)


@dataclass
class JobRun:
    reply: Ack | Error  # the execute reply
    events: list[Any] = field(default_factory=list)
    statuses: list[JobStatus] = field(default_factory=list)
    headers: list[dict[str, str] | None] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, Token))

    @property
    def terminal(self) -> End | Error:
        return self.events[-1]


class Stream:
    """The client side of one job: its inbox and its status subject, subscribed up front."""

    def __init__(self, nc: Client, job_id: str) -> None:
        self.nc = nc
        self.job_id = job_id
        self.inbox = nc.new_inbox()

    async def __aenter__(self) -> Stream:
        self.events = await self.nc.subscribe(self.inbox)
        self.status = await self.nc.subscribe(SUBJECTS.job_status(self.job_id))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.events.unsubscribe()
        await self.status.unsubscribe()

    async def execute(
        self, worker_id: str, headers: dict[str, str] | None = None, **params: Any
    ) -> Ack | Error:
        execute = make_execute(self.job_id, self.inbox, **params)
        msg = await self.nc.request(
            SUBJECTS.execute(worker_id), encode(execute), timeout=WAIT, headers=headers
        )
        return decode_reply(msg.data)

    async def next_event(self, run: JobRun) -> Any:
        msg = await self.events.next_msg(timeout=WAIT)
        event = decode_event(msg.data)
        run.events.append(event)
        run.headers.append(msg.headers)
        return event

    async def finish(self, run: JobRun) -> JobRun:
        """Read events up to the terminal one, then statuses up to the final one."""
        while not run.events or not isinstance(run.events[-1], End | Error):
            await self.next_event(run)
        while not run.statuses or run.statuses[-1].state not in ("finished", "failed"):
            run.statuses.append(decode_status((await self.status.next_msg(timeout=WAIT)).data))
        # The final status is published after the terminal event, on the same connection:
        # anything sent to the stream after the terminal event would be queued here by now.
        assert self.events.pending_msgs == 0, "event after the terminal event"
        return run


# A job that cannot end before the test interrupts it (cancel, abandon, a signal): greedy, so
# the same text every run, on a prompt whose greedy text does not reach EOS in the whole
# context (checked past 1900 tokens), and as many tokens as the context holds. It runs for
# seconds; the interrupt follows its first token by one NATS round trip.
LONG_PROMPT = "Write a long story about a dragon:"  # 8 tokens with BOS
LONG_TOKENS = N_CTX - 16
LONG_JOB: dict[str, Any] = {"prompt": LONG_PROMPT, "temperature": 0.0, "max_tokens": LONG_TOKENS}


async def start_long_job(stream: Stream, worker_id: str) -> JobRun:
    """Start LONG_JOB on `worker_id` and return once its first token arrived (it is running)."""
    run = JobRun(await stream.execute(worker_id, **LONG_JOB))
    assert isinstance(run.reply, Ack), run.reply
    while not isinstance(await stream.next_event(run), Token):
        assert not isinstance(run.events[-1], End | Error), run.events[-1]
    return run


async def generate(nc: Client, worker_id: str, job_id: str, **params: Any) -> JobRun:
    async with Stream(nc, job_id) as stream:
        run = JobRun(await stream.execute(worker_id, **params))
        assert isinstance(run.reply, Ack), run.reply
        return await stream.finish(run)
