"""Control plane at scale: the REAL orchestrator and nats-server against simulated pools/workers.

    python -m bench.controlplane [--pools 125 --devices 8] [--skip-e2e]

1. Core micro-benchmark (in process): `Core.handle` decision time per event with 1,000
   workers (125 pools x 8 devices) and N queued jobs, N in 0 / 1k / 10k / 100k.
2. End to end (nats-server + `llorch orch` + 2 SIMULATED ENGINE processes, bench/sim/):
   heartbeat load (orchestrator CPU% and RSS from /proc, 1,000 workers heartbeating every
   second), heartbeat-to-view latency (a heartbeat that reports a spawned worker ready ->
   the execute the orchestrator sends it), admission rate with many concurrent clients,
   and the orchestrator's RSS with 100,000 queued jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench.common import (
    cpu_seconds,
    rss_bytes,
    start_stack,
    summary,
    table,
    use_uvloop,
    write_results,
)
from bench.sim.simcluster import SIM_MODEL, SIM_SPARE_MODEL, SimPool, pool_id
from llorch_orch.core import Core, OrchConfig
from llorch_orch.core import events as ev
from llorch_orch.core.config import ModelConfig
from schemas import (
    Ack,
    Device,
    End,
    Error,
    Event,
    Execute,
    GenerateRequest,
    JobStatus,
    SpawnRequest,
    Started,
    Subjects,
    WorkerInfo,
    decoder,
    encode,
)

QUEUE_SIZES = (0, 1_000, 10_000, 100_000)
ORCH_TOML = """
queue_capacity = 200000
spawn_timeout_s = 3600.0
stall_timeout_s = 600.0
[default_model]
keep_alive_s = 0.0
"""
_event = decoder(Event)
_execute = decoder(Execute)
_spawn = decoder(SpawnRequest)


# ---- 1. the pure core -------------------------------------------------------------------------
def _core(pools: int, devices: int, queue: int) -> tuple[Core, list[str], float]:
    """A core that adopted pools x devices workers, all busy, with `queue` jobs waiting."""
    cfg = OrchConfig(queue_capacity=queue + 10_000, default_model=ModelConfig(keep_alive_s=0))
    core = Core(cfg)
    now = time.time()
    for i in range(pools):
        core.handle(ev.HeartbeatSeen(now, SimPool(i, devices).heartbeat(1.0)))
    running = []
    for n in range(pools * devices + queue):
        out = core.handle(_submit(now, f"j{n}"))
        if n < pools * devices:
            running.append(f"j{n}")
            assert out and type(out[0]).__name__ == "SendExecute", out
    return core, running, now


def _submit(now: float, job_id: str) -> ev.Submit:
    req = GenerateRequest(model=SIM_MODEL, prompt="hi", max_tokens=8, job_id=job_id)
    return ev.Submit(now, req, f"_INBOX.x.{job_id}")


def core_bench(pools: int, devices: int, queue: int, cycles: int) -> dict[str, object]:
    """Steady state: a job ends (its worker takes the next queued job, which is accepted and
    starts) and a new job arrives, so the queue stays at `queue`; a heartbeat now and then."""
    core, running, now = _core(pools, devices, queue)
    times: dict[str, list[float]] = {"submit": [], "finished": [], "accepted": [], "started": []}
    times["heartbeat"] = []
    seq = itertools.count(pools * devices + queue)
    clock = time.perf_counter_ns
    for c in range(cycles):
        job = running.pop(0)
        worker = core.jobs[job].worker_id
        assert worker is not None
        status = JobStatus(job_id=job, worker_id=worker, state="finished", seq=3)
        t = clock()
        out = core.handle(ev.StatusSeen(now, status))
        times["finished"].append(clock() - t)
        nxt = next((c.execute.job_id for c in out if hasattr(c, "execute")), None)
        if nxt is not None:
            running.append(nxt)
            t = clock()
            core.handle(ev.ExecuteAccepted(now, nxt, worker))
            times["accepted"].append(clock() - t)
            started = JobStatus(job_id=nxt, worker_id=worker, state="started", seq=0)
            t = clock()
            core.handle(ev.StatusSeen(now, started))
            times["started"].append(clock() - t)
        t = clock()
        out = core.handle(_submit(now, f"j{next(seq)}"))
        times["submit"].append(clock() - t)
        if queue == 0 and out and hasattr(out[0], "execute"):
            running.append(out[0].execute.job_id)
        if c % 10 == 0:
            hb = ev.HeartbeatSeen(now, SimPool(c % pools, devices).heartbeat(1.0))
            t = clock()
            core.handle(hb)
            times["heartbeat"].append(clock() - t)
    us = {k: [v / 1000 for v in vs] for k, vs in times.items()}
    decisions = [v for k, vs in us.items() if k != "heartbeat" for v in vs]
    return {
        "queue": len(core.queue),
        "workers": len(core.view.workers),
        "decision_us": summary(decisions),
        "by_event_us": {k: summary(v) for k, v in us.items()},
    }


# ---- 2. end to end ----------------------------------------------------------------------------
class Orch:
    """CPU and RSS of the orchestrator process, from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def load(self, seconds: float) -> dict[str, float]:
        c0, t0 = cpu_seconds(self.pid), time.monotonic()
        await asyncio.sleep(seconds)
        cpu = (cpu_seconds(self.pid) - c0) / (time.monotonic() - t0)
        return {"cpu_pct_of_one_core": cpu * 100, "rss_mib": rss_bytes(self.pid) / 2**20}


class Inbox:
    """One subscription for many jobs' streams: `<inbox>.<n>` is job n's reply subject."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.on_event: Callable[[str, object], None] = lambda job, event: None

    async def start(self) -> None:
        await self.nc.subscribe(f"{self.prefix}.*", cb=self._on_msg, pending_msgs_limit=-1)

    async def _on_msg(self, msg: Msg) -> None:
        self.on_event(msg.subject.rsplit(".", 1)[1], _event(msg.data))

    async def submit(self, n: str, request: GenerateRequest) -> None:
        await self.nc.publish(Subjects().generate, encode(request), reply=f"{self.prefix}.{n}")


async def heartbeat_latency(nc: Client, probes: int) -> dict[str, object]:
    """A job pinned to an extra (probe) pool makes the orchestrator spawn a worker there; the
    probe pool then heartbeats that worker as ready at t0; the execute it sends is t1."""
    s = Subjects()
    pool = SimPool(999, 1)
    pool.workers.clear()
    pid = pool_id(999)
    spawned: asyncio.Queue[str] = asyncio.Queue()

    async def on_spawn(msg: Msg) -> None:
        await msg.respond(encode(Ack()))
        await spawned.put(_spawn(msg.data).worker_id)

    async def on_stop(msg: Msg) -> None:
        await msg.respond(encode(Ack()))

    await nc.subscribe(s.spawn(pid), cb=on_spawn)
    await nc.subscribe(s.stop(pid), cb=on_stop)
    inbox = Inbox(nc)
    await inbox.start()

    async def beat(workers: list[tuple[str, str]]) -> float:
        hb = pool.heartbeat(1.0)
        hb.models = [m for m in hb.models if m.name == SIM_SPARE_MODEL]
        hb.devices = [_probe_device()]
        hb.workers = [_winfo(w, st) for w, st in workers]
        t = time.perf_counter()
        await nc.publish(s.heartbeat(pid), encode(hb))
        await nc.flush()
        return t

    await beat([])
    await asyncio.sleep(1.5)
    lat = []
    for k in range(probes):
        req = GenerateRequest(model=SIM_SPARE_MODEL, prompt="p", max_tokens=1, pool=pid)
        await inbox.submit(f"probe{k}", req)
        wid = await asyncio.wait_for(spawned.get(), 10)
        sub = await nc.subscribe(s.execute(wid))
        await nc.flush()
        await beat([(wid, "starting")])
        await asyncio.sleep(0.05)
        t0 = await beat([(wid, "ready")])
        msg = await sub.next_msg(timeout=10)
        lat.append((time.perf_counter() - t0) * 1000)
        job = _execute(msg.data)
        await msg.respond(encode(Ack()))
        done = JobStatus(job_id=job.job_id, worker_id=wid, state="finished", seq=job.seq + 1)
        await nc.publish(s.job_status(job.job_id), encode(done))
        await sub.unsubscribe()
        await beat([])  # the worker leaves: the next probe spawns a new one
        await asyncio.sleep(0.2)
    return {"probes": probes, "latency_ms": summary(lat), "samples_ms": lat}


def _probe_device() -> Device:
    return Device(
        index=0, uuid="GPU-probe", name="SIM-GPU", kind="gpu", total_bytes=80 << 30,
        free_bytes=79 << 30, used_bytes=1 << 30,
    )  # fmt: skip


def _winfo(wid: str, state: str) -> WorkerInfo:
    return WorkerInfo(
        worker_id=wid, model=SIM_SPARE_MODEL, device=0, pid=1, state=state,  # type: ignore[arg-type]
        memory_bytes=1 << 30 if state == "ready" else None,
    )  # fmt: skip


async def admission(nc: Client, orch: Orch, window: int, seconds: float) -> dict[str, object]:
    """`window` clients, each submitting its next job as soon as its last one ended."""
    inbox = Inbox(nc)
    sent: dict[str, float] = {}
    admit_ms: list[float] = []
    counts = {"admitted": 0, "ended": 0, "errors": 0}
    free: asyncio.Queue[None] = asyncio.Queue()

    def on_event(job: str, event: object) -> None:
        if isinstance(event, Started):
            counts["admitted"] += 1
            admit_ms.append((time.perf_counter() - sent[job]) * 1000)
        elif isinstance(event, End | Error):
            counts["ended" if isinstance(event, End) else "errors"] += 1
            del sent[job]
            free.put_nowait(None)

    inbox.on_event = on_event
    await inbox.start()
    for _ in range(window):
        free.put_nowait(None)
    c0, t0 = cpu_seconds(orch.pid), time.perf_counter()
    n = 0
    while time.perf_counter() - t0 < seconds:
        await free.get()
        n += 1
        sent[str(n)] = time.perf_counter()
        await inbox.submit(str(n), GenerateRequest(model=SIM_MODEL, prompt="hi", max_tokens=1))
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(orch.pid) - c0) / wall
    while sent:
        await asyncio.sleep(0.05)
    return {
        "window": window,
        "seconds": wall,
        "admitted_per_s": counts["admitted"] / wall,
        "ended_per_s": counts["ended"] / wall,
        "errors": counts["errors"],
        "submit_to_started_ms": summary(admit_ms),
        "orch_cpu_pct_of_one_core": cpu * 100,
        "orch_rss_mib": rss_bytes(orch.pid) / 2**20,
    }


async def queued(nc: Client, orch: Orch, n: int) -> dict[str, object]:
    """`n` jobs of a model whose only worker never becomes ready: they all wait."""
    inbox = Inbox(nc)
    got = {"queued": 0, "errors": 0}

    def on_event(_job: str, event: object) -> None:
        got["errors" if isinstance(event, Error) else "queued"] += 1

    inbox.on_event = on_event
    await inbox.start()
    rss0 = rss_bytes(orch.pid)
    t0 = time.perf_counter()
    for k in range(n):
        req = GenerateRequest(model=SIM_SPARE_MODEL, prompt="queued job", max_tokens=8)
        await inbox.submit(f"q{k}", req)
        if k % 1000 == 999:
            while got["queued"] + got["errors"] < k - 5000:  # stay near the orchestrator
                await asyncio.sleep(0.01)
    while got["queued"] + got["errors"] < n and time.perf_counter() - t0 < 120:
        await asyncio.sleep(0.05)
    enqueue_s = time.perf_counter() - t0
    idle = await orch.load(10.0)  # heartbeats keep coming while 100k jobs wait
    return {
        "jobs": n,
        "acknowledged": got["queued"],
        "errors": got["errors"],
        "enqueue_per_s": n / enqueue_s,
        "rss_before_mib": rss0 / 2**20,
        "rss_mib": rss_bytes(orch.pid) / 2**20,
        "heartbeat_cpu_pct_with_queue": idle["cpu_pct_of_one_core"],
    }


async def e2e(args: argparse.Namespace) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="llorch-cp-"))
    config = tmp / "orch.toml"
    config.write_text(ORCH_TOML)
    stack = start_stack(tmp, ["--config", str(config)], auth=False)
    sims: list[subprocess.Popen[bytes]] = []
    try:
        orch = Orch(stack.children[0][1].pid)
        for shard in range(args.shards):
            cmd = [
                sys.executable, "-m", "bench.sim.simcluster", "--nats-url", stack.nats_url,
                "--pools", str(args.pools), "--devices", str(args.devices), "--rate", "0",
                "--shard", f"{shard}/{args.shards}",
            ]  # fmt: skip
            log = (tmp / "logs" / f"sim{shard}.log").open("ab")
            sims.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT))
        nc = await nats.connect(stack.nats_url, pending_size=256 << 20)
        await until_workers(nc, args.pools * args.devices)
        out: dict[str, object] = {}
        print("heartbeat load ...", file=sys.stderr)
        out["heartbeat_load"] = await orch.load(args.idle_s)
        print("heartbeat -> view latency ...", file=sys.stderr)
        out["heartbeat_to_view"] = await heartbeat_latency(nc, args.probes)
        print("admission ...", file=sys.stderr)
        out["admission"] = await admission(nc, orch, args.window, args.admit_s)
        print(f"{args.queued} queued jobs ...", file=sys.stderr)
        out["queued"] = await queued(nc, orch, args.queued)
        await nc.close()
        return out
    finally:
        for p in sims:
            p.terminate()
            p.wait()
        stack.stop()


async def until_workers(nc: Client, n: int, timeout: float = 60) -> None:
    from llorch_common import client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = await client.state(nc, timeout=10)
        except Exception:
            state = None
        have = sum(len(p.workers) for p in getattr(state, "pools", []))
        if have >= n:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"orchestrator did not see {n} workers in {timeout}s")


# ---- report -----------------------------------------------------------------------------------
def plot(core: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    qs = [max(c["queue"], 1) for c in core]
    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=100)
    for q, style in (("p50", "o-"), ("p99", "s--")):
        ax.plot(qs, [c["decision_us"][q] for c in core], style, label=q)
    ax.axhline(100, color="red", lw=0.8, label="target p99")
    ax.set_xscale("log")
    ax.set_xlabel("queued jobs (0 plotted at 1)")
    ax.set_ylabel("Core.handle time, µs")
    ax.set_title("Core decision time, 1,000 workers")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def print_tables(res: dict) -> None:
    rows = []
    for c in res["core"]:
        d, by = c["decision_us"], c["by_event_us"]
        rows.append([c["queue"], d["p50"], d["p99"], by["submit"]["p99"], by["finished"]["p99"],
                     by["heartbeat"]["p50"], by["heartbeat"]["p99"]])  # fmt: skip
    print(table(["queued", "decision p50 µs", "p99", "submit p99", "finished p99",
                 "heartbeat p50", "heartbeat p99"], rows))  # fmt: skip
    e = res.get("e2e")
    if not e:
        return
    hb, lat, ad, q = e["heartbeat_load"], e["heartbeat_to_view"], e["admission"], e["queued"]
    print()
    print(table(["end to end (real orchestrator + nats-server)", "value"], [
        ["heartbeat load: orchestrator CPU % of one core", hb["cpu_pct_of_one_core"]],
        ["heartbeat load: orchestrator RSS MiB", hb["rss_mib"]],
        ["heartbeat -> view (execute) p50 ms", lat["latency_ms"]["p50"]],
        ["heartbeat -> view (execute) p99 ms", lat["latency_ms"]["p99"]],
        [f"admitted jobs/s ({ad['window']} concurrent clients)", ad["admitted_per_s"]],
        ["completed jobs/s", ad["ended_per_s"]],
        ["submit -> started p50 ms", ad["submit_to_started_ms"]["p50"]],
        ["submit -> started p99 ms", ad["submit_to_started_ms"]["p99"]],
        ["orchestrator CPU % during admission", ad["orch_cpu_pct_of_one_core"]],
        [f"{q['jobs']:,} queued: orchestrator RSS MiB", q["rss_mib"]],
        ["queued jobs acknowledged (queued events)", q["acknowledged"]],
        ["enqueue rate jobs/s", q["enqueue_per_s"]],
        ["heartbeat CPU % with the queue full", q["heartbeat_cpu_pct_with_queue"]],
    ]))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pools", type=int, default=125)
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--cycles", type=int, default=3000, help="core steady-state cycles per size")
    ap.add_argument("--shards", type=int, default=2, help="simulator processes")
    ap.add_argument("--idle-s", type=float, default=20.0)
    ap.add_argument("--probes", type=int, default=40)
    ap.add_argument("--window", type=int, default=256, help="concurrent clients")
    ap.add_argument("--admit-s", type=float, default=15.0)
    ap.add_argument("--queued", type=int, default=100_000)
    ap.add_argument("--skip-e2e", action="store_true")
    ap.add_argument("--out", default="controlplane")
    args = ap.parse_args()
    res: dict[str, object] = {"config": vars(args)}
    res["core"] = []
    for q in QUEUE_SIZES:
        print(f"core: {q} queued ...", file=sys.stderr)
        res["core"].append(core_bench(args.pools, args.devices, q, args.cycles))  # type: ignore[union-attr]
    if not args.skip_e2e:
        use_uvloop()
        res["e2e"] = asyncio.run(e2e(args))
    img = Path(__file__).parent.parent / "docs" / "img" / "core_decision_time.png"
    plot(res["core"], img)  # type: ignore[arg-type]
    print(f"results: {write_results(args.out, res)}", file=sys.stderr)
    print_tables(res)


if __name__ == "__main__":
    main()
