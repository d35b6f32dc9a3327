"""Continuous batching on this box's CPU: one worker with `--slots 8` against one with
`--slots 1` (and, with --baseline REV, the worker as it was at REV, before slots), on the
bundled model, straight over NATS (no orchestrator: the client plays it, holding at most
`slots` jobs on a worker at once, as the orchestrator's queue would).

    python -m bench.slots_cpu [--levels 1,2,4,8] [--waves 3] [--max-tokens 64]
                              [--baseline 31505a8] [--threads N]

At each level N, a wave starts N streams together (every prompt begins with a number never
used before, so no two are alike) and ends with the last; the workers take turns wave by
wave, so drift on a shared machine hits them alike. Greedy (temperature 0), the same
max_tokens for all. Workers run with the pool's defaults (no --threads unless given: llama.cpp
then uses half the cores for one token and all of them for a batch).

Aggregate tokens/s: every generated token of a level's waves / the sum of their wall times.
TTFT: execute sent (or, when the worker's slots were all taken, the moment the stream asked
for one) -> first token event at the client. Writes bench/results/slots_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import nats
from nats.aio.client import Client

from bench.common import model_path, summary, table, write_results
from llorch_orch.natsserver import NatsServer
from schemas import End, Event, Execute, Subjects, Token, decoder, encode

SUBJECTS = Subjects()
N_CTX = 512
PROMPT = "{n}. Write a short story about a lighthouse keeper:"
_event = decoder(Event)


@dataclass
class Worker:
    label: str
    worker_id: str
    slots: int
    proc: subprocess.Popen[bytes]
    gate: asyncio.Semaphore = field(init=False)
    waves: dict[int, list[tuple[float, int, list[float]]]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate = asyncio.Semaphore(self.slots)


def baseline_tree(rev: str, into: Path) -> Path:
    """The repository's packages as they were at `rev` (git archive), to run that worker."""
    data = subprocess.run(["git", "archive", rev], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


async def spawn(
    nc: Client, url: str, label: str, slots: int, threads: int | None, root: Path | None
) -> Worker:
    worker_id = f"bench-{label}"
    sub = await nc.subscribe(SUBJECTS.ready(worker_id))
    await nc.flush()
    argv = [sys.executable, "-m", "llorch_worker", "--nats-url", url, "--worker-id", worker_id,
            "--pool-id", "bench", "--model", "smollm2", "--model-path", str(model_path()),
            "--n-ctx", str(N_CTX), "--device", "0", "--device-kind", "cpu"]  # fmt: skip
    if root is None:  # the baseline predates --slots
        argv += ["--slots", str(slots)]
    if threads is not None:
        argv += ["--threads", str(threads)]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    if root is not None:
        env["PYTHONPATH"] = str(root)
    proc = subprocess.Popen(argv, env=env, cwd=root)
    while True:
        msg = await sub.next_msg(timeout=120)
        if b'"ready"' in msg.data:
            break
    await sub.unsubscribe()
    return Worker(label, worker_id, slots, proc)


async def stream(nc: Client, worker: Worker, n: int, max_tokens: int) -> tuple[int, float]:
    """One job: (tokens generated, TTFT in seconds from the moment it asked for a slot)."""
    asked = time.perf_counter()
    async with worker.gate:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        job = Execute(
            job_id=f"{worker.label}-{n}", model="smollm2", prompt=PROMPT.format(n=n),
            max_tokens=max_tokens, temperature=0.0, top_p=0.95, top_k=40, seed=n, stream=inbox,
        )  # fmt: skip
        reply = await nc.request(SUBJECTS.execute(worker.worker_id), encode(job), timeout=60)
        assert b'"ack"' in reply.data, reply.data
        first = None
        while True:
            event = _event((await sub.next_msg(timeout=120)).data)
            if isinstance(event, Token) and first is None:
                first = time.perf_counter() - asked
            if isinstance(event, End):
                await sub.unsubscribe()
                return event.tokens_out, first or 0.0
            assert not hasattr(event, "code"), event


async def wave(nc: Client, worker: Worker, level: int, counter: itertools.count[int],
               max_tokens: int) -> tuple[float, int, list[float]]:  # fmt: skip
    started = time.perf_counter()
    results = await asyncio.gather(
        *(stream(nc, worker, next(counter), max_tokens) for _ in range(level))
    )
    wall = time.perf_counter() - started
    return wall, sum(t for t, _ in results), [ttft for _, ttft in results]


async def main(args: argparse.Namespace) -> None:
    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        server = NatsServer.start(Path(tmp) / "js")
        nc = await nats.connect(server.url)
        workers: list[Worker] = []
        try:
            if args.baseline:
                root = baseline_tree(args.baseline, Path(tmp) / "baseline")
                workers.append(await spawn(nc, server.url, "baseline", 1, args.threads, root))
            for slots in (1, 8):
                workers.append(await spawn(nc, server.url, f"slots{slots}", slots, args.threads,
                                           None))  # fmt: skip
            counter = itertools.count(1)
            for w in workers:  # warm-up: first jobs allocate what later ones reuse
                await wave(nc, w, 2 if w.slots > 1 else 1, counter, 8)
            for level in levels:
                for _ in range(args.waves):
                    for w in workers:
                        w.waves.setdefault(level, []).append(
                            await wave(nc, w, level, counter, args.max_tokens)
                        )
        finally:
            await nc.close()
            for w in workers:
                w.proc.send_signal(signal.SIGTERM)
                w.proc.wait(timeout=60)
            server.stop()
    report(workers, levels, args)


def report(workers: list[Worker], levels: list[int], args: argparse.Namespace) -> None:
    rows, out = [], {}
    for w in workers:
        single = None
        for level in levels:
            waves = w.waves[level]
            rate = sum(t for _, t, _ in waves) / sum(s for s, _, _ in waves)
            ttft = summary([x * 1000 for *_, xs in waves for x in xs])
            single = rate if level == 1 else single
            ratio = rate / single if single else float("nan")
            rows.append([w.label, level, rate, ttft["p50"], ttft["p99"], ratio])
            out.setdefault(w.label, {})[str(level)] = {
                "tokens_per_s": rate, "ttft_ms": ttft, "vs_one_stream": ratio,
            }  # fmt: skip
    print(table(["worker", "streams", "tokens/s", "TTFT p50 ms", "TTFT p99 ms", "x 1 stream"],
                rows))  # fmt: skip
    path = write_results("slots_cpu", {
        "args": vars(args), "n_ctx": N_CTX, "prompt": PROMPT, "results": out,
    })  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--levels", default="1,2,4,8")
    p.add_argument("--waves", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--baseline", default="", help="a git revision whose worker runs too")
    p.add_argument("--threads", type=int, default=None)
    asyncio.run(main(p.parse_args()))
