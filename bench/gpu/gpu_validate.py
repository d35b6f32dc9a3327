"""Issue 8: llorch on real NVIDIA GPUs, every check in one device run (see bench/gpu/README.md).

    python3 bench/gpu/gpu_validate.py main --small S.gguf --big B.gguf --json out.json

Phases, each on a fresh orchestrator + pool (one nats-server, one data dir, pool id `gpu`):
  spread     inventory == nvidia-smi == NVML; small and big-a land on DIFFERENT cards; full
             offload (ready message, worker log); NVML shows each worker's pid on its card only;
             then llorch vs direct llama-cpp-python on the same card, interleaved.
  best-fit   small and big-a land on ONE card; NVML agrees.
  eviction   `--device-memory-limit` makes a card hold two big workers: big-b streams a long
             job while big-c needs card 0 (pinned); the idle big-a must go, big-b must finish.

`direct` is the child that runs llama-cpp-python alone (CUDA_VISIBLE_DEVICES = the card): it
imports llama_cpp and never nats (nats first made CUDA loads segfault), the main run the reverse.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

MiB = 2**20
POOL = "gpu"
N_CTX = 2048  # the orchestrator's default n_ctx: the direct runs use the same
EVICT_LIMIT = 11 * 2**30  # two big workers (~4.7 GiB each) fit a card, a third does not
LONG_TOKENS = 4000  # big-b's job: ~10 s at ~400 tok/s, long enough to be busy throughout
FREE_TOLERANCE = 64 * MiB  # free memory moves between reads (other processes, the driver)
WORDS = [
    "Apple",
    "Blue",
    "Carbon",
    "Delta",
    "Eagle",
    "Forest",
    "Garden",
    "Harbor",
    "Island",
    "Jungle",
    "Kettle",
    "Lemon",
    "Marble",
    "North",
    "Ocean",
    "Pepper",
    "Quartz",
    "River",
    "Silver",
    "Tiger",
    "Umbrella",
    "Violet",
    "Window",
    "Yellow",
    "Zebra",
    "Anchor",
    "Bridge",
    "Candle",
    "Desert",
    "Ember",
    "Falcon",
    "Glacier",
]


def prompt(i: int) -> str:
    """~16 tokens; a different first word each time, so no KV prefix could be shared."""
    return f"{WORDS[i % len(WORDS)]} {i}: write a short story about the sea, the stars and a ship."


# --- direct llama-cpp-python (child process) -------------------------------------------------


def direct(args: argparse.Namespace) -> int:
    """JSON lines in (prompt, max_tokens), timings out; the same calls as llorch's engine."""
    import llama_cpp  # first, before anything that could pull in nats

    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=args.model, n_gpu_layers=-1, n_ctx=args.n_ctx, verbose=False)
    load_s = time.perf_counter() - t0
    _direct_run(llm, "Hello, world. How are you today?", 8)  # warm-up, as the worker does
    print(json.dumps({"ready": True, "load_s": load_s, "pid": os.getpid()}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        print(json.dumps(_direct_run(llm, req["prompt"], req["max_tokens"])), flush=True)
    return 0


def _direct_run(llm: Any, text: str, max_tokens: int) -> dict[str, float]:
    import llama_cpp

    start = time.perf_counter()
    tokens = llm.tokenize(text.encode(), add_bos=True, special=True)
    llm.set_seed(0)
    llm.reset()
    vocab, first, n = llama_cpp.llama_model_get_vocab(llm.model), 0.0, 0
    for token in llm.generate(tokens, top_k=40, top_p=0.95, min_p=0.0, temp=0.0):
        if llama_cpp.llama_vocab_is_eog(vocab, token):  # as the worker does
            break
        llm.detokenize([token])
        n += 1
        first = first or time.perf_counter()
        if n >= max_tokens:
            break
    return _timing(start, first, time.perf_counter(), n)


def _timing(start: float, first: float, end: float, n: int) -> dict[str, float]:
    return {
        "ttft_ms": (first - start) * 1000,
        "decode_tok_s": (n - 1) / (end - first) if n > 1 and end > first else 0.0,
        "e2e_tok_s": n / (end - start),
        "tokens": n,
    }


class Direct:
    """A `direct` child on one card, driven one request at a time over stdin/stdout."""

    def __init__(self, model: str, card: int, log: Path) -> None:
        env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(card)}
        cmd = [sys.executable, __file__, "direct", "--model", model, "--n-ctx", str(N_CTX)]
        self.proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log.open("ab"),
            text=True,
        )
        self.hello = self._read()

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"direct child exited with {self.proc.wait()}")
        return json.loads(line)  # type: ignore[no-any-return]

    def run(self, text: str, max_tokens: int) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"prompt": text, "max_tokens": max_tokens}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


# --- facts from the GPU side ----------------------------------------------------------------


def smi() -> list[dict[str, str]]:
    keys = ["index", "uuid", "name", "memory.total", "memory.free"]
    out = subprocess.run(
        ["nvidia-smi", f"--query-gpu={','.join(keys)}", "--format=csv,noheader,nounits"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [
        dict(zip(keys, (v.strip() for v in line.split(",")), strict=True))
        for line in out.strip().splitlines()
    ]


class Nvml:
    def __init__(self) -> None:
        import pynvml

        from llorch_pool.inventory import memory_info

        self.nv, self._memory_info = pynvml, memory_info
        pynvml.nvmlInit()
        self.count = pynvml.nvmlDeviceGetCount()

    def _h(self, i: int) -> Any:
        return self.nv.nvmlDeviceGetHandleByIndex(i)

    def cards(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.count):
            h, mem = self._h(i), self._memory_info(self.nv, self._h(i))
            name, uuid = self.nv.nvmlDeviceGetName(h), self.nv.nvmlDeviceGetUUID(h)
            out.append(
                {
                    "index": i,
                    "uuid": _s(uuid),
                    "name": _s(name),
                    "total": mem.total,
                    "free": mem.free,
                    "used": mem.used,
                }
            )
        return out

    def procs(self) -> dict[int, dict[int, int]]:
        """Per card: pid -> bytes, from nvmlDeviceGetComputeRunningProcesses."""
        return {
            i: {
                p.pid: int(p.usedGpuMemory or 0)
                for p in self.nv.nvmlDeviceGetComputeRunningProcesses(self._h(i))
            }
            for i in range(self.count)
        }

    def versions(self) -> dict[str, str]:
        cuda = self.nv.nvmlSystemGetCudaDriverVersion_v2()
        return {
            "driver": _s(self.nv.nvmlSystemGetDriverVersion()),
            "cuda": f"{cuda // 1000}.{cuda % 1000 // 10}",
        }

    async def wait_idle(self, pids: set[int] | None = None, timeout: float = 30) -> bool:
        """Until none of `pids` (None: no process at all) holds memory on any card."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            held = {pid for card in self.procs().values() for pid in card}
            if not (held & pids if pids is not None else held):
                return True
            await asyncio.sleep(0.2)
        return False


def _s(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


# --- llorch side ------------------------------------------------------------------------------


@dataclass
class Checks:
    items: list[dict[str, Any]] = field(default_factory=list)

    def check(self, name: str, ok: bool, detail: object = "") -> bool:
        self.items.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail}", flush=True)
        return bool(ok)


@dataclass
class Gen:
    worker: str | None
    end: Any  # End | Error
    timing: dict[str, float]
    t_end: float


class Llorch:
    """One orchestrator + pool on the shared server; heartbeats and ready messages recorded."""

    def __init__(self, url: str, data_dir: Path, name: str, paths: dict[str, str]) -> None:
        from llorch_orch.stack import Stack
        from schemas import Subjects

        self.url, self.data_dir, self.name, self.paths = url, data_dir, name, paths
        self.nc: Any = None
        self.stack = Stack(data_dir=data_dir, nats_url=url, prefix=Subjects().prefix)
        self.subjects = Subjects()
        self.ready: dict[str, Any] = {}
        self.hb: Any = None
        self.on_heartbeat: Callable[[Any], None] | None = None

    async def start(self, orch_args: list[str], pool_args: list[str]) -> None:
        import nats

        from schemas import Heartbeat, WorkerReady, decoder

        hb, ready = decoder(Heartbeat), decoder(WorkerReady)
        self.nc = await nats.connect(self.url)

        async def on_hb(msg: Any) -> None:
            self.hb = hb(msg.data)
            if self.on_heartbeat:
                self.on_heartbeat(self.hb)

        async def on_ready(msg: Any) -> None:
            try:
                r = ready(msg.data)
            except Exception:  # a WorkerFailed: the pool's heartbeat reports it
                return
            self.ready[r.worker_id] = r

        await self.nc.subscribe(self.subjects.heartbeat(POOL), cb=on_hb)
        await self.nc.subscribe(self.subjects.ready_all, cb=on_ready)
        for folder in sorted({str(Path(p).resolve().parent) for p in self.paths.values()}):
            pool_args = [*pool_args, "--allow-model-dir", folder]  # the pool refuses others
        self.stack.spawn(f"orch-{self.name}", ["llorch_orch", "orch", *orch_args])
        self.stack.spawn(
            f"pool-{self.name}",
            [
                "llorch_pool",
                "serve",
                "--pool-id",
                POOL,
                "--data-dir",
                str(self.data_dir),
                "--heartbeat-interval",
                "0.5",
                *pool_args,
            ],
        )
        await self.stack.wait_ready(POOL)
        await self.until(lambda s: any(p.pool_id == POOL and p.alive for p in s.pools))

    async def state(self) -> Any:
        from llorch_common import client

        return await client.state(self.nc, self.subjects)

    async def until(self, pred: Callable[[Any], bool], timeout: float = 60) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                try:
                    s = await self.state()
                    if pred(s):
                        return s
                except Exception:  # orchestrator not answering yet
                    pass
                await asyncio.sleep(0.2)

    async def gen(self, model: str, text: str, max_tokens: int, **pins: Any) -> Gen:
        from llorch_common import client
        from schemas import End, Error, GenerateRequest, Started, Token

        req = GenerateRequest(
            model=model, prompt=text, max_tokens=max_tokens, temperature=0.0, seed=0, **pins
        )
        start, first, worker, end = time.perf_counter(), 0.0, None, None
        async for ev in client.stream(self.nc, req, self.subjects, stall_s=120):
            if isinstance(ev, Started):
                worker = ev.worker_id
            elif isinstance(ev, Token):
                first = first or time.perf_counter()
            elif isinstance(ev, End | Error):
                end = ev
        t_end = time.perf_counter()
        n = end.tokens_out if isinstance(end, End) else 0
        return Gen(worker, end, _timing(start, first or t_end, t_end, n), t_end)

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()
        self.stack.stop()


def _ended(g: Gen, tokens: int) -> bool:
    from schemas import End

    return isinstance(g.end, End) and g.end.tokens_out == tokens


# --- phases -----------------------------------------------------------------------------------


def check_inventory(c: Checks, nvml: Nvml, hb: Any, state: Any) -> None:
    cards, smi_rows = nvml.cards(), smi()
    devs = sorted(hb.devices, key=lambda d: d.index)
    view = next(p for p in state.pools if p.pool_id == POOL).devices
    c.check(
        "inventory: count",
        len(devs) == len(cards) == len(smi_rows) == len(view),
        f"pool {len(devs)}, NVML {len(cards)}, nvidia-smi {len(smi_rows)}, api.state {len(view)}",
    )
    for d, n, s in zip(devs, cards, smi_rows, strict=False):
        c.check(
            f"inventory: GPU{d.index} name/uuid/kind",
            (d.name, d.uuid, d.kind)
            == (n["name"], n["uuid"], "gpu")
            == (s["name"], s["uuid"], "gpu"),
            f"{d.name} {d.uuid}",
        )
        c.check(
            f"inventory: GPU{d.index} total exact",
            d.total_bytes == n["total"] and d.total_bytes // MiB == int(s["memory.total"]),
            f"pool {d.total_bytes} B, NVML {n['total']} B, nvidia-smi {s['memory.total']} MiB",
        )
        off = max(abs(d.free_bytes - n["free"]), abs(d.free_bytes - int(s["memory.free"]) * MiB))
        c.check(
            f"inventory: GPU{d.index} free within {FREE_TOLERANCE // MiB} MiB",
            off <= FREE_TOLERANCE,
            f"pool {d.free_bytes / MiB:.0f}, NVML {n['free'] / MiB:.0f}, nvidia-smi "
            f"{s['memory.free']} MiB; used pool {d.used_bytes / MiB:.0f} (NVML v2) vs v1 "
            f"would count the driver's reserve",
        )
    c.check(
        "inventory: api.state devices == heartbeat devices",
        [(d.index, d.uuid, d.total_bytes) for d in view]
        == [(d.index, d.uuid, d.total_bytes) for d in devs],
    )


def check_workers(c: Checks, nvml: Nvml, run: Llorch, label: str, ids: list[str]) -> dict[str, Any]:
    """Full offload (ready message + worker log) and NVML: each pid on its card and no other."""
    procs, out = nvml.procs(), {}
    for wid in ids:
        r = run.ready.get(wid)
        if r is None:
            c.check(f"{label}: {wid} ready message", False, "none heard")
            continue
        log = run.data_dir / "logs" / f"worker-{wid}.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        line = next((ln.strip() for ln in text.splitlines() if "offloaded" in ln), "(no line)")
        c.check(
            f"{label}: {wid} ({r.model}) fully offloaded",
            r.layers_offloaded == r.layers_total > 1,
            f"ready {r.layers_offloaded}/{r.layers_total}; log: {line}",
        )
        on = [i for i, card in procs.items() if r.pid in card]
        mem = procs.get(r.device, {}).get(r.pid, 0)
        c.check(
            f"{label}: {wid} pid {r.pid} memory on GPU{r.device} only",
            on == [r.device],
            f"NVML cards with the pid: {on}, {mem / MiB:.0f} MiB on GPU{r.device}",
        )
        out[wid] = {
            "model": r.model,
            "device": r.device,
            "pid": r.pid,
            "ready_memory_mib": r.memory_bytes / MiB,
            "nvml_now_mib": mem / MiB,
            "load_ms": r.load_ms,
            "n_ctx": r.n_ctx,
        }
    return out


async def placement(c: Checks, nvml: Nvml, run: Llorch, strategy: str) -> dict[str, Any]:
    a = await run.gen("small", prompt(0), 16)
    b = await run.gen("big-a", prompt(1), 16)
    c.check(
        f"{strategy}: both generations ended",
        _ended(a, 16) and _ended(b, 16),
        f"{a.end!r} / {b.end!r}",
    )
    workers = check_workers(c, nvml, run, strategy, [w for w in (a.worker, b.worker) if w])
    cards = [w["device"] for w in workers.values()]
    want = "different cards" if strategy == "spread" else "one card"
    ok = len(cards) == 2 and (
        cards[0] != cards[1] if strategy == "spread" else cards[0] == cards[1]
    )
    c.check(f"{strategy}: small and big-a on {want}", ok, f"devices {cards}")
    for wid, w in workers.items():  # the orchestrator's footprint (re-measured by the pool
        # before each heartbeat) vs NVML after jobs: the next worker is budgeted from it
        learned = await _learned_mib(run, wid, w["nvml_now_mib"] - 64)
        w["learned_mib"] = learned
        c.check(
            f"{strategy}: {wid} learned memory honest (within 64 MiB of NVML after jobs)",
            abs(learned - w["nvml_now_mib"]) <= 64,
            f"ready {w['ready_memory_mib']:.0f} MiB, learned {learned:.0f} MiB, "
            f"NVML now {w['nvml_now_mib']:.0f} MiB",
        )
    return workers


async def _learned_mib(run: Llorch, worker_id: str, at_least_mib: float) -> float:
    """The worker's memory in the orchestrator's view once it reaches `at_least_mib`, or what
    it is after 10 s (a heartbeat every 0.5 s re-measures it)."""

    def mib(state: Any) -> float:
        found = [
            w.memory_bytes or 0 for p in state.pools for w in p.workers if w.worker_id == worker_id
        ]
        return found[0] / MiB if found else 0.0

    try:
        return mib(await run.until(lambda s: mib(s) >= at_least_mib, timeout=10))
    except TimeoutError:
        return mib(await run.state())


def _p50(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def perf(run: Llorch, workers: dict[str, Any], logs: Path, runs: dict[str, int]) -> list:
    """Per model: llorch and direct on the worker's card, alternately first, same prompts."""
    table = []
    for w in workers.values():
        model, card, n = w["model"], w["device"], runs[w["model"]]
        path = run.paths[model]
        d = await asyncio.to_thread(Direct, path, card, logs / f"direct-{model}.log")
        try:
            rows: dict[str, list] = {"llorch": [], "direct": []}
            for i in range(n):
                order = ("llorch", "direct") if i % 2 == 0 else ("direct", "llorch")
                for who in order:
                    if who == "llorch":
                        g = await run.gen(model, prompt(i + 2), 64)
                        rows["llorch"].append(g.timing)
                    else:
                        rows["direct"].append(await asyncio.to_thread(d.run, prompt(i + 2), 64))
        finally:
            await asyncio.to_thread(d.close)
        for who, rs in rows.items():
            table.append(
                {
                    "model": model,
                    "card": card,
                    "path": who,
                    "runs": len(rs),
                    "tokens": sorted({int(r["tokens"]) for r in rs}),
                    "ttft_p50_ms": _p50(rs, "ttft_ms"),
                    "ttft_p90_ms": statistics.quantiles([r["ttft_ms"] for r in rs], n=10)[-1],
                    "decode_tok_s_p50": _p50(rs, "decode_tok_s"),
                    "e2e_tok_s_p50": _p50(rs, "e2e_tok_s"),
                }
            )
            print(f"perf {table[-1]}", flush=True)
    return table


async def eviction(c: Checks, nvml: Nvml, run: Llorch) -> dict[str, Any]:
    d0 = next(d for d in run.hb.devices if d.index == 0)
    c.check(
        "evict: --device-memory-limit caps GPU0",
        d0.total_bytes == EVICT_LIMIT,
        f"total {d0.total_bytes} B, free {d0.free_bytes / MiB:.0f} MiB",
    )
    a = await run.gen("big-a", prompt(40), 8, device=0)
    wa = a.worker
    gone: dict[str, float] = {}

    def watch(hb: Any) -> None:  # when big-a's worker leaves, and whether big-b still streams
        w = next((x for x in hb.workers if x.worker_id == wa), None)
        if "t" not in gone and (w is None or w.state in ("draining", "exited", "failed")):
            gone["t"] = time.perf_counter()

    run.on_heartbeat = watch
    long_job = asyncio.create_task(run.gen("big-b", prompt(41), LONG_TOKENS, device=0))
    await run.until(lambda s: any(j.model == "big-b" and j.state == "running" for j in s.running))
    await asyncio.sleep(0.5)  # tokens flowing
    t_ask = time.perf_counter()
    cgen = await run.gen("big-c", prompt(42), 8, device=0)
    b = await long_job
    s = await run.state()
    live = {w.worker_id: w for p in s.pools for w in p.workers}
    c.check(
        "evict: big-a's idle worker was stopped",
        wa not in live or live[wa].state in ("draining", "exited", "failed"),
        f"worker {wa}: {live.get(wa).state if wa in live else 'gone'}",
    )
    c.check(
        "evict: big-c ran on GPU0",
        _ended(cgen, 8) and cgen.worker in run.ready and run.ready[cgen.worker].device == 0,
        f"{cgen.end!r}",
    )
    c.check(
        "evict: busy big-b streamed to End (never evicted)", _ended(b, LONG_TOKENS), f"{b.end!r}"
    )
    during = "t" in gone and t_ask < gone["t"] < b.t_end
    c.check(
        "evict: the eviction happened while big-b was busy",
        during,
        f"asked +0, big-a gone +{gone.get('t', 0) - t_ask:.2f}s, big-b ended "
        f"+{b.t_end - t_ask:.2f}s",
    )
    procs = nvml.procs()
    ra, rb, rc = (run.ready.get(w) for w in (wa, b.worker, cgen.worker))
    ok = (
        ra is not None
        and rb is not None
        and rc is not None
        and ra.pid not in procs[0]
        and {rb.pid, rc.pid} <= set(procs[0])
    )
    c.check(
        "evict: NVML GPU0 holds big-b and big-c, not big-a",
        ok,
        {i: {p: round(m / MiB) for p, m in card.items()} for i, card in procs.items()},
    )
    return {
        "evicted": wa,
        "busy": b.worker,
        "new": cgen.worker,
        "busy_tokens": getattr(b.end, "tokens_out", None),
    }


# --- main -------------------------------------------------------------------------------------


def register(data_dir: Path, small: str, big: str) -> dict[str, str]:
    paths = {"small": small, "big-a": big, "big-b": big, "big-c": big}
    for name, path in paths.items():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "llorch_pool",
                "models",
                "add",
                name,
                path,
                "--data-dir",
                str(data_dir),
            ],
            check=True,
        )
    return paths


async def phase(c: Checks, label: str, work: Awaitable[Any], timeout: float) -> Any:
    """`work`'s result, or None with a failed check: one broken phase never hides the others."""
    try:
        async with asyncio.timeout(timeout):
            return await work
    except Exception as exc:
        c.check(f"{label}: phase completed", False, repr(exc))
        return None


async def one_stack(
    c: Checks, nvml: Nvml, run: Llorch, plan: Plan, args: argparse.Namespace, result: dict[str, Any]
) -> None:
    await phase(c, f"{plan.name} start", run.start(plan.orch_args, plan.pool_args), 90)
    if run.hb is None:
        return
    if plan.name == "spread":
        check_inventory(c, nvml, run.hb, await run.state())
    if plan.name == "evict":
        result["eviction"] = await phase(c, plan.name, eviction(c, nvml, run), 150)
        return
    workers = await phase(c, plan.name, placement(c, nvml, run, plan.name), 120)
    result[f"workers_{plan.name}"] = workers
    if plan.name == "spread" and workers:
        runs = {"small": args.runs, "big-a": args.big_runs}
        result["perf"] = await phase(c, "perf", perf(run, workers, Path(args.logs), runs), 240)


@dataclass(frozen=True)
class Plan:
    name: str
    orch_args: list[str]
    pool_args: list[str]


async def validate(args: argparse.Namespace) -> dict[str, Any]:
    from llorch_orch.natsserver import NatsServer

    data = Path(args.data_dir)
    (data / "logs").mkdir(parents=True, exist_ok=True)
    Path(args.logs).mkdir(parents=True, exist_ok=True)
    c, nvml = Checks(), Nvml()
    result: dict[str, Any] = {"versions": nvml.versions(), "smi": smi(), "checks": c.items}
    c.check("no GPU process before start", await nvml.wait_idle(timeout=5), nvml.procs())
    paths = register(data, args.small, args.big)
    server = NatsServer.start(data / "js", log_file=data / "logs" / "nats-server.log")
    evict_toml = data / "evict.toml"
    evict_toml.write_text("[models.big-b]\nn_ctx = 4096\n")  # room for LONG_TOKENS
    plans = [
        Plan("spread", ["--placement", "spread"], []),
        Plan("best-fit", ["--placement", "best-fit"], []),
        Plan(
            "evict",
            ["--placement", "best-fit", "--config", str(evict_toml)],
            ["--device-memory-limit", str(EVICT_LIMIT)],
        ),
    ]
    try:
        for plan in plans:
            run = Llorch(server.url, data, plan.name, paths)
            try:
                await one_stack(c, nvml, run, plan, args, result)
            finally:
                await run.stop()
                pids = {r.pid for r in run.ready.values()}
                gone = await nvml.wait_idle(pids)
                c.check(f"{plan.name}: workers gone after stop", gone, sorted(pids))
    finally:
        server.stop()
    result["passed"] = all(i["ok"] for i in c.items)
    return result


def main(args: argparse.Namespace) -> int:
    t0 = time.perf_counter()
    result = asyncio.run(validate(args))
    result["wall_s"] = time.perf_counter() - t0
    if args.meta_json and Path(args.meta_json).exists():
        result["setup"] = json.loads(Path(args.meta_json).read_text())
    Path(args.json).write_text(json.dumps(result, indent=2, default=lambda o: asdict(o)))
    bad = [i["check"] for i in result["checks"] if not i["ok"]]
    print(
        f"{len(result['checks']) - len(bad)}/{len(result['checks'])} checks passed; failed: {bad}"
    )
    return 0 if result["passed"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("main")
    m.add_argument("--small", required=True)
    m.add_argument("--big", required=True)
    m.add_argument("--data-dir", default="/tmp/llorch-gpu")
    m.add_argument("--logs", default="/tmp/probe-logs")
    m.add_argument("--json", required=True)
    m.add_argument("--meta-json")
    m.add_argument("--runs", type=int, default=30)
    m.add_argument("--big-runs", type=int, default=10)
    d = sub.add_parser("direct")
    d.add_argument("--model", required=True)
    d.add_argument("--n-ctx", type=int, default=N_CTX)
    return p


if __name__ == "__main__":
    a = build_parser().parse_args()
    sys.exit(direct(a) if a.command == "direct" else main(a))
