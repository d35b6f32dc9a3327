"""Cold start: worker spawn -> ready, against llama-cpp-python's bare model load in process.

    python -m bench.coldstart [--reps 5]

1. Bare load: `llama_cpp.Llama(model)` in this process (file in the page cache), median.
2. Worker alone: `python -m llorch_worker ...` started here against an open nats-server,
   Popen -> its `ready` message; broken down into python start (`python -c pass`), imports
   (`llama_cpp` + the worker's modules, timed inside a fresh interpreter), model load (the
   `load_ms` the worker reports), NATS connect (timed here) and the rest (serve + announce).
3. Full stack (`llorch up` processes, auth on): a job for a model with no worker; on the wire,
   the orchestrator's spawn request -> the worker's `ready` (what the orchestrator observes)
   and -> the pool's first heartbeat listing it ready (what the pool reports); plus the
   client's submit -> first token. Keep-alive 1 s retires the worker between repetitions.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nats

from bench.common import (
    MODEL,
    POOL_ID,
    connect,
    model_path,
    start_stack,
    summary,
    table,
    use_uvloop,
    write_results,
)
from llorch_common import client
from llorch_orch.natsserver import NatsServer
from schemas import GenerateRequest, Heartbeat, SpawnRequest, Subjects, Token, WorkerReady, decoder

N_CTX = 2048
_ready = decoder(WorkerReady)
_heartbeat = decoder(Heartbeat)
_spawn = decoder(SpawnRequest)
_IMPORTS = (
    "import time; t = time.perf_counter(); import llama_cpp; import llorch_worker.service; "
    "print(time.perf_counter() - t)"
)


def bare_load(reps: int) -> list[float]:
    import llama_cpp

    path = str(model_path())
    out = []
    for _ in range(reps + 1):  # the first one warms the page cache
        t = time.perf_counter()
        llm = llama_cpp.Llama(model_path=path, n_ctx=N_CTX, n_threads=1, verbose=False)
        out.append((time.perf_counter() - t) * 1000)
        del llm
    return out[1:]


def _wall_ms(cmd: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    return (time.perf_counter() - t) * 1000


async def worker_alone(reps: int, tmp: Path) -> dict[str, object]:
    server = NatsServer.start(tmp / "js-alone")
    s = Subjects()
    rows: dict[str, list[float]] = {"total": [], "load": [], "connect": []}
    try:
        nc = await nats.connect(server.url)
        for k in range(reps):
            wid = f"cold{k}"
            sub = await nc.subscribe(s.ready(wid))
            await nc.flush()
            cmd = [
                sys.executable, "-m", "llorch_worker", "--nats-url", server.url,
                "--worker-id", wid, "--pool-id", POOL_ID, "--model", MODEL,
                "--model-path", str(model_path()), "--n-ctx", str(N_CTX), "--device", "0",
                "--device-kind", "cpu", "--threads", "1",
            ]  # fmt: skip
            t = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            ready = _ready((await sub.next_msg(timeout=60)).data)
            rows["total"].append((time.perf_counter() - t) * 1000)
            rows["load"].append(ready.load_ms)
            proc.terminate()
            proc.wait()
            t = time.perf_counter()
            other = await nats.connect(server.url)
            rows["connect"].append((time.perf_counter() - t) * 1000)
            await other.close()
        await nc.close()
    finally:
        server.stop()
    py = [_wall_ms([sys.executable, "-c", "pass"]) for _ in range(reps)]
    imports = [
        float(subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, check=True,
                             text=True).stdout) * 1000
        for _ in range(reps)
    ]  # fmt: skip
    med = {k: statistics.median(v) for k, v in rows.items()}
    parts = {
        "python start": statistics.median(py),
        "imports (llama_cpp, nats, worker)": statistics.median(imports),
        "model load (worker's load_ms)": med["load"],
        "NATS connect": med["connect"],
    }
    parts["serve + announce + rest"] = med["total"] - sum(parts.values())
    return {"total_ms": summary(rows["total"]), "breakdown_ms": parts, "samples": rows}


class Tap:
    """Messages on a subject with the time they reached this process."""

    def __init__(self) -> None:
        self.q: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def on_msg(self, msg: nats.aio.msg.Msg) -> None:
        self.q.put_nowait((time.perf_counter(), msg.data))

    async def next(self, timeout: float = 30) -> tuple[float, bytes]:
        return await asyncio.wait_for(self.q.get(), timeout)


async def full_stack(reps: int, tmp: Path) -> dict[str, object]:
    pool_args = ["--worker-threads", "1", "--heartbeat-interval", "1"]
    stack = start_stack(tmp / "stack", ["--keep-alive", "1"], pool_args)
    s = Subjects()
    res: dict[str, list[float]] = {"orch": [], "pool": [], "first_token": []}
    try:
        await stack.wait_ready(POOL_ID)
        tap = await nats.connect(stack.nats_url, **stack.credentials("admin").connect_options())
        nc = await connect(stack)
        spawns, readies, beats = Tap(), Tap(), Tap()
        await tap.subscribe(s.spawn(POOL_ID), cb=spawns.on_msg)
        await tap.subscribe(s.ready_all, cb=readies.on_msg)
        await tap.subscribe(s.heartbeat(POOL_ID), cb=beats.on_msg)
        for _ in range(reps):
            await _until_no_worker(beats)
            req = GenerateRequest(model=MODEL, prompt="Hello", max_tokens=2, temperature=0.0)
            t = time.perf_counter()
            first = None
            async for event in client.stream(nc, req, stall_s=60):
                if isinstance(event, Token) and first is None:
                    first = time.perf_counter()
            res["first_token"].append(((first or time.perf_counter()) - t) * 1000)
            t_spawn, data = await spawns.next(1)
            wid = _spawn(data).worker_id
            t_ready, _ = await readies.next(1)
            res["orch"].append((t_ready - t_spawn) * 1000)
            res["pool"].append((await _ready_beat(beats, wid) - t_spawn) * 1000)
        await nc.close()
        await tap.close()
    finally:
        stack.stop()
    return {k: summary(v) for k, v in res.items()}


async def _until_no_worker(beats: Tap) -> None:
    while True:
        _, data = await beats.next()
        if all(w.state in ("exited", "failed") for w in _heartbeat(data).workers):
            return


async def _ready_beat(beats: Tap, wid: str) -> float:
    """When the first heartbeat that lists the worker as ready arrived."""
    while True:
        t, data = await beats.next(10)
        if any(
            w.worker_id == wid and w.state in ("ready", "busy") for w in _heartbeat(data).workers
        ):
            return t


def print_tables(res: dict) -> None:
    load = res["bare_load_ms"]["p50"]
    alone = res["worker_alone"]
    rows = [[k, v] for k, v in alone["breakdown_ms"].items()]
    rows.append(["= worker spawn -> ready (median)", alone["total_ms"]["p50"]])
    print(table(["worker alone: spawn -> ready, ms", "median"], rows))
    print()
    fs = res["full_stack"]
    print(table(["cold start, ms", "p50", "max", "- bare load p50", "target"], [
        ["bare llama-cpp-python load (in process)", load, res["bare_load_ms"]["p99"], 0.0, ""],
        ["worker alone: spawn -> ready", alone["total_ms"]["p50"], alone["total_ms"]["p99"],
         alone["total_ms"]["p50"] - load, "<= load + 500"],
        ["orchestrator-observed: spawn request -> ready", fs["orch"]["p50"], fs["orch"]["p99"],
         fs["orch"]["p50"] - load, "<= load + 500"],
        ["pool-observed: spawn request -> ready heartbeat", fs["pool"]["p50"], fs["pool"]["p99"],
         fs["pool"]["p50"] - load, ""],
        ["client: submit (no worker) -> first token", fs["first_token"]["p50"],
         fs["first_token"]["p99"], fs["first_token"]["p50"] - load, ""],
    ]))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--out", default="coldstart")
    args = ap.parse_args()
    use_uvloop()
    tmp = Path(tempfile.mkdtemp(prefix="llorch-cold-"))
    res: dict[str, object] = {"config": vars(args)}
    res["bare_load_ms"] = summary(bare_load(args.reps))
    res["worker_alone"] = asyncio.run(worker_alone(args.reps, tmp))
    res["full_stack"] = asyncio.run(full_stack(args.reps, tmp))
    print(f"results: {write_results(args.out, res)}", file=sys.stderr)
    print_tables(res)


if __name__ == "__main__":
    main()
