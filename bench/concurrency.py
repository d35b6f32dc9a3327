"""Many streams at once (issue 14): aggregate tokens/s and TTFT at 1, 2, 4, … concurrent
streams, llorch against llama.cpp's own server and llama-cpp-python's, in one run.

    python -m bench.concurrency --levels 1,2,4,8 --server-bin .bench-build/llama-server
    python -m bench.concurrency --replot bench/results/concurrency-cpu.json

Paths (same GGUF, prompts, max_tokens, temperature 0, engine threads, n_ctx per stream):

- llorch: `llorch up --http off` as a user runs it (its default config: the model's `slots`
  default), one `llorch_common.client.stream` per request. `--llorch-slots N` adds a stack
  whose config says `[default_model] slots = N`; `llorch-slots1` says `slots = 1` (today's
  behaviour before continuous batching). Each stack is its own `llorch up` (own nats-server);
  the slots a worker reports once loaded are recorded (a worker without slots reports 1).
- llama-server: llama.cpp's server from the same vendored source as llama-cpp-python
  (bench/gpu/concurrency.sh builds it), restarted at each level with `-np N -c N*n_ctx`
  (continuous batching, n_ctx per slot), `-fa off` as the worker's context (flash attention
  off, as llama-cpp-python's `Llama` sets it), `/v1/completions` streamed.
- llama_cpp.server: llama-cpp-python's OpenAI server (one sequence at a time; requests wait
  for its lock), `--interrupt_requests False`: by default a waiting request makes it cut the
  running stream short, which would count as a fast, short answer.
- direct (level 1 only): llama-cpp-python alone, `Llama.generate` in a child process that
  never imports nats (bench/gpu/gpu_validate.py's), one stream at a time: the TTFT a worker's
  own (`end.ttft_ms`, recorded for the llorch paths as `engine_ttft_ms`) is compared with.

At each level N: one warm-up wave (8 tokens each, discarded; it also spawns llorch's worker),
then `--waves` waves; in a wave N streams start together (one event loop, all requests sent
in the same tick) and the wave ends with the last one. The paths take turns wave by wave, so
drift in a shared machine hits them alike. Every prompt starts with a number never used before
in the run, so no engine reuses a KV prefix (llama-server's prompt cache, llama-cpp-python's
prefix match) beyond the BOS token.

TTFT: request sent -> first non-empty text at the client. Aggregate tokens/s of a level: every
generated token of its waves / the sum of the waves' wall times (`best` = the best wave's).
Tokens: llorch's `end.tokens_out`, llama-server's usage, llama_cpp.server's streamed chunks
(one per token). `full` counts requests that ran to max_tokens: greedy decoding of these
prompts must not stop early, or the paths would not do the same work.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx

from bench.common import MODEL, model_path, summary, table, use_uvloop, write_results

N_CTX = 2048  # per stream, as the orchestrator's default n_ctx per slot
WARMUP_TOKENS = 8
_STORY = (
    "The lighthouse keepers of the northern coast kept a log of the weather, the ships that "
    "passed and the small repairs that filled their days. One winter the lamp failed during a "
    "storm, and the youngest keeper climbed the tower with a lantern in his hand. Tell the rest "
    "of the story in detail, with what he saw from the top of the tower:"
)


@dataclass
class Req:
    ttft_ms: float
    total_ms: float
    tokens: int
    error: str = ""
    engine_ttft_ms: float = 0.0  # llorch: the worker's own (job start to first token)


@dataclass
class Wave:
    level: int
    wall_s: float
    reqs: list[Req]


class Path_(Protocol):
    name: str

    async def one(self, prompt: str, max_tokens: int) -> Req: ...

    async def close(self) -> None: ...


def prompt(n: int) -> str:
    """A fresh prompt: the number leads, so two prompts share no token after BOS."""
    return f"{n}. {_STORY}"


def _threads(gpu: bool) -> tuple[int, int]:
    """What the worker's context uses (cores/2 for decode, all cores for batches, as
    llama-cpp-python's `Llama`); every path gets the same."""
    cores = os.cpu_count() or 1
    return max(cores // 2, 1), cores


def _free_port() -> int:
    from llorch_orch.natsserver import free_port

    return free_port()


# --- llorch -------------------------------------------------------------------------------


class Llorch:
    """One `llorch up` (its own nats-server, orchestrator, pool) and a client connection."""

    def __init__(self, name: str, slots: int | None, args: argparse.Namespace, tmp: Path) -> None:
        self.name, self.args, self.want_slots = name, args, slots
        self.data = tmp / name
        self.data.mkdir(parents=True)
        self.nc: Any = None
        self.slots_seen: list[int] = []
        self.worker_pids: list[int] = []
        cmd = [sys.executable, "-m", "llorch_orch", "up", "--data-dir", str(self.data)]
        cmd += ["--port", str(_free_port()), "--http", "off", "--pool-id", "bench"]
        if not args.gpu:
            cmd.append("--cpu")
        if slots is not None:
            conf = self.data / "bench.toml"
            conf.write_text(f"[default_model]\nslots = {slots}\n")
            cmd += ["--config", str(conf)]
        if args.model_path:
            path = Path(args.model_path).resolve()
            cmd += ["--allow-model-dir", str(path.parent)]
            subprocess.run(
                [sys.executable, "-m", "llorch_pool", "models", "add", args.model_name,
                 str(path), "--data-dir", str(self.data)],
                check=True, stdout=subprocess.DEVNULL,
            )  # fmt: skip
        self.log = (args.logs / f"{name}.log").open("ab")
        # its own process group: the Ctrl-C of `stop` reaches `llorch up` alone
        self.proc = subprocess.Popen(
            cmd, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    async def wait_ready(self) -> None:
        import nats

        from llorch_common.connect import Credentials
        from llorch_common.local import read_stack_record, seed_file

        for _ in range(1200):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name}: llorch up exited {self.proc.returncode}")
            record = read_stack_record(self.data)
            if record is not None and record.pid == self.proc.pid:
                creds = Credentials()
                if record.creds_dir:  # the CLI's identity, as `llorch generate` uses it
                    seed = seed_file(Path(record.creds_dir), "client-cli")
                    creds = Credentials(nkey_seed_file=seed)
                options: dict[str, Any] = dict(creds.connect_options())
                self.nc = await nats.connect(record.nats_url, **options)
                return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name}: llorch up did not come up")

    async def one(self, text: str, max_tokens: int) -> Req:
        from llorch_common import client
        from schemas import End, Error, GenerateRequest, Token

        request = GenerateRequest(
            model=self.args.model_name, prompt=text, max_tokens=max_tokens, temperature=0.0,
            seed=1234,
        )  # fmt: skip
        first = 0.0
        t0 = time.perf_counter()
        async with contextlib.aclosing(client.stream(self.nc, request, stall_s=300)) as events:
            async for event in events:
                if isinstance(event, Token) and event.text and not first:
                    first = time.perf_counter()
                elif isinstance(event, Error):
                    return Req(0, 0, 0, f"{event.code}: {event.message}")
                elif isinstance(event, End):
                    t1 = time.perf_counter()
                    ttft = (first - t0) * 1e3
                    return Req(ttft, (t1 - t0) * 1e3, event.tokens_out, "", event.ttft_ms)
        return Req(0, 0, 0, "stream ended without a terminal event")

    async def record_slots(self) -> None:
        from llorch_common import client
        from schemas import Error

        state = await client.state(self.nc)
        if not isinstance(state, Error):
            workers = [w for p in state.pools for w in p.workers]
            self.slots_seen = [w.slots for w in workers]
            self.worker_pids = [w.pid or _pid_of(w.worker_id) for w in workers]

    async def close(self) -> None:
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # `llorch up`'s clean stop (as Ctrl-C)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


def _pid_of(worker_id: str) -> int:
    """A worker's pid from its command line (the state may not carry it)."""
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if b"--worker-id" in argv and worker_id.encode() in argv:
                return int(proc.name)
    return 0


# --- HTTP peers -----------------------------------------------------------------------------


class Http:
    """An OpenAI-style `/v1/completions` server, streamed and read with httpx."""

    name = "http"
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, port: int) -> None:
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{port}", timeout=600, limits=limits
        )

    def body(self, text: str, max_tokens: int) -> dict[str, Any]:
        return {
            "prompt": text, "max_tokens": max_tokens, "temperature": 0.0, "seed": 1234,
            "stream": True,
        }  # fmt: skip

    async def wait_ready(self, probe: str) -> None:
        for _ in range(3000):
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await self.http.get(probe)).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError(f"{self.name} did not come up")

    async def one(self, text: str, max_tokens: int) -> Req:
        first, chunks, usage = 0.0, 0, None
        t0 = time.perf_counter()
        try:
            async with self.http.stream(
                "POST", "/v1/completions", json=self.body(text, max_tokens)
            ) as resp:
                if resp.status_code != 200:
                    return Req(0, 0, 0, f"HTTP {resp.status_code}: {(await resp.aread())[:200]!r}")
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if data.get("usage"):
                        usage = data["usage"].get("completion_tokens")
                    choices = data.get("choices") or []
                    if choices and choices[0].get("text"):
                        chunks += 1
                        if not first:
                            first = time.perf_counter()
        except httpx.HTTPError as exc:
            return Req(0, 0, 0, repr(exc))
        t1 = time.perf_counter()
        return Req((first - t0) * 1e3 if first else 0, (t1 - t0) * 1e3, usage or chunks)

    async def close(self) -> None:
        await self.http.aclose()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class LlamaServer(Http):
    """llama.cpp's server with N slots (continuous batching); restarted for each level."""

    name = "llama-server"

    def __init__(self, args: argparse.Namespace, path: Path, level: int) -> None:
        port = _free_port()
        super().__init__(port)
        t, tb = _threads(args.gpu)
        cmd = [
            args.server_bin, "-m", str(path), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(level), "-c", str(level * N_CTX), "-t", str(t), "-tb", str(tb),
            "-ngl", "999" if args.gpu else "0", "-fa", args.server_fa, "--no-webui",
            # no host-RAM prompt cache: every prompt is new, so it could only cost (saving an
            # idle slot's KV on each new task)
            "--cache-ram", "0",
        ]  # fmt: skip
        log = (args.logs / f"llama-server-np{level}.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)

    def body(self, text: str, max_tokens: int) -> dict[str, Any]:
        # usage in the last chunk: the server's own count of generated tokens
        return {**super().body(text, max_tokens), "stream_options": {"include_usage": True}}


class LlamaCppServer(Http):
    """llama-cpp-python's OpenAI server: one `Llama`, one sequence at a time."""

    name = "llama_cpp.server"

    def __init__(self, args: argparse.Namespace, path: Path) -> None:
        port = _free_port()
        super().__init__(port)
        t, tb = _threads(args.gpu)
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host",
            "127.0.0.1", "--port", str(port), "--n_ctx", str(N_CTX), "--n_threads", str(t),
            "--n_threads_batch", str(tb), "--n_gpu_layers", "-1" if args.gpu else "0",
            "--interrupt_requests", "False", "--verbose", "False",
        ]  # fmt: skip
        log = (args.logs / "llama_cpp.server.log").open("ab")
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)


class Direct:
    """llama-cpp-python alone, in a child process, one stream at a time (level 1 only)."""

    name = "direct"

    def __init__(self, args: argparse.Namespace, path: Path) -> None:
        from bench.gpu.gpu_validate import Direct as Child

        self.child = Child(str(path), 0, args.logs / "direct.log")

    async def one(self, text: str, max_tokens: int) -> Req:
        r = await asyncio.to_thread(self.child.run, text, max_tokens)
        total = r["ttft_ms"] + (r["tokens"] - 1) / r["decode_tok_s"] * 1e3 if r["tokens"] > 1 else 0
        return Req(r["ttft_ms"], total, int(r["tokens"]))

    async def close(self) -> None:
        await asyncio.to_thread(self.child.close)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Counter:
    n: int = 0

    def next(self) -> int:
        self.n += 1
        return self.n


@dataclass
class Results:
    ids: Counter = field(default_factory=Counter)
    waves: dict[str, list[Wave]] = field(default_factory=dict)
    slots: dict[str, list[int]] = field(default_factory=dict)
    profiles: dict[str, Any] = field(default_factory=dict)


async def wave(path: Path_, level: int, max_tokens: int, ids: Counter) -> Wave:
    """`level` streams sent in the same tick; the wave ends with the last one."""
    texts = [prompt(ids.next()) for _ in range(level)]
    t0 = time.perf_counter()
    reqs = await asyncio.gather(*(path.one(t, max_tokens) for t in texts))
    return Wave(level, time.perf_counter() - t0, list(reqs))


async def start_fixed(
    args: argparse.Namespace, path: Path, tmp: Path
) -> tuple[list[Llorch], list[Path_]]:
    """The llorch stacks and llama_cpp.server, started together (their loads overlap)."""
    want = set(args.paths.split(","))
    llorch: list[Llorch] = []
    if "llorch" in want:
        llorch.append(Llorch("llorch", None, args, tmp))
    if "llorch-slotsN" in want and args.llorch_slots > 1:
        llorch.append(Llorch(f"llorch-slots{args.llorch_slots}", args.llorch_slots, args, tmp))
    if "llorch-slots1" in want:
        llorch.append(Llorch("llorch-slots1", 1, args, tmp))
    fixed: list[Path_] = list(llorch)
    peer = LlamaCppServer(args, path) if "llama_cpp.server" in want else None
    if peer is not None:
        fixed.append(peer)
    if "direct" in want:
        fixed.append(Direct(args, path))
    try:
        for stack in llorch:
            await stack.wait_ready()
        if peer is not None:
            await peer.wait_ready("/v1/models")
    except BaseException:
        for p in fixed:
            await p.close()
        raise
    return llorch, fixed


async def run_level(
    level: int, paths: list[Path_], llorch: list[Llorch], args: argparse.Namespace, res: Results
) -> None:
    for p in paths:  # warm-up: spawns llorch's worker, sizes llama-server's batches
        await wave(p, level, WARMUP_TOKENS, res.ids)
    for stack in llorch:
        await stack.record_slots()
        res.slots[stack.name] = stack.slots_seen
    for w in range(args.waves):
        for p in paths:  # the paths take turns, wave by wave
            result = await wave(p, level, args.max_tokens, res.ids)
            res.waves.setdefault(p.name, []).append(result)
            _progress(p.name, result, w, args)
    if args.profile and level == max(int(x) for x in args.levels.split(",")):
        for stack in llorch:
            if max(stack.slots_seen, default=1) > 1 or stack is llorch[0]:
                res.profiles[stack.name] = await profile(stack, level, args, res.ids)


async def profile(stack: Llorch, level: int, args: argparse.Namespace, ids: Counter) -> Any:
    """One more wave (not counted) with py-spy sampling the worker: where its time goes.
    Python frames only; a thread inside a ctypes call (llama_decode, sampling) shows that
    call as its leaf, and ctypes releases the GIL there."""
    if len(stack.worker_pids) != 1:
        return {"error": f"workers: {stack.worker_pids}"}
    raw = args.logs / f"profile-{stack.name}-n{level}.txt"
    cmd = ["py-spy", "record", "--pid", str(stack.worker_pids[0]), "--rate", "200"]
    cmd += ["--format", "raw", "--threads", "--nonblocking", "-o", str(raw)]
    try:
        spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    except OSError as exc:
        return {"error": repr(exc)}
    await asyncio.sleep(1.0)  # attached
    result = await wave(stack, level, args.max_tokens, ids)
    spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
    try:
        spy.wait(timeout=30)
    except subprocess.TimeoutExpired:
        spy.kill()
    out = summarize_profile(raw) if raw.exists() else {"error": "no py-spy output"}
    out["wave_tokens_per_s"] = sum(r.tokens for r in result.reqs) / result.wall_s
    return out


def summarize_profile(raw: Path, top: int = 12) -> dict[str, Any]:
    """Per thread: samples, and the leaf frames (self time) that take most of them."""
    threads: dict[str, dict[str, int]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        thread = frames[0]
        leaf = frames[-1]
        per = threads.setdefault(thread, {})
        per[leaf] = per.get(leaf, 0) + int(count)
    total = sum(sum(v.values()) for v in threads.values()) or 1
    return {
        "samples": total,
        "threads": {
            t: {
                "share": sum(v.values()) / total,
                "top_leaves": sorted(v.items(), key=lambda kv: -kv[1])[:top],
            }
            for t, v in sorted(threads.items(), key=lambda kv: -sum(kv[1].values()))
        },
        "raw": str(raw),
    }


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.model_path) if args.model_path else model_path()
    tmp = Path(tempfile.mkdtemp(prefix="llorch-conc-"))
    args.logs.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    res = Results()
    llorch, fixed = await start_fixed(args, path, tmp)
    try:
        for level in levels:
            paths = [p for p in fixed if level == 1 or not isinstance(p, Direct)]
            server: LlamaServer | None = None
            if "llama-server" in args.paths.split(","):
                server = LlamaServer(args, path, level)
                paths.insert(len(llorch), server)
            try:
                if server is not None:
                    await server.wait_ready("/health")
                await run_level(level, paths, llorch, args, res)
            finally:
                if server is not None:
                    await server.close()
            if args.json:  # what is done so far survives a run cut short by its time limit
                args.json.write_text(json.dumps(report(res, levels, args, path), default=float))
    finally:
        for p in fixed:
            await p.close()
    return report(res, levels, args, path)


def _progress(name: str, w: Wave, i: int, args: argparse.Namespace) -> None:
    toks = sum(r.tokens for r in w.reqs)
    errs = sum(bool(r.error) for r in w.reqs)
    bad = f"  ERRORS {errs}: {next(r.error for r in w.reqs if r.error)}" if errs else ""
    print(
        f"  N={w.level:>2} wave {i + 1}/{args.waves} {name:>18}: {toks / w.wall_s:8.1f} tok/s"
        f"  wall {w.wall_s:6.2f}s{bad}",
        file=sys.stderr,
    )


def report(res: Results, levels: list[int], args: argparse.Namespace, path: Path) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {}
    for name, waves in res.waves.items():
        per: dict[str, Any] = {}
        for level in levels:
            ws = [w for w in waves if w.level == level]
            if not ws:
                continue
            reqs = [r for w in ws for r in w.reqs]
            ok = [r for r in reqs if not r.error]
            tokens = sum(r.tokens for r in ok)
            per[str(level)] = {
                "tokens_per_s": tokens / sum(w.wall_s for w in ws),
                "tokens_per_s_best": max(sum(r.tokens for r in w.reqs) / w.wall_s for w in ws),
                "tokens_per_s_waves": [sum(r.tokens for r in w.reqs) / w.wall_s for w in ws],
                "ttft_ms": summary([r.ttft_ms for r in ok]),
                "engine_ttft_ms": summary([r.engine_ttft_ms for r in ok if r.engine_ttft_ms]),
                "total_ms": summary([r.total_ms for r in ok]),
                "requests": len(reqs),
                "errors": [r.error for r in reqs if r.error][:5],
                "n_errors": len(reqs) - len(ok),
                "full": sum(r.tokens == args.max_tokens for r in ok),
                "samples": [asdict(r) for r in reqs],
            }
        rows[name] = per
    return {
        "config": {
            "levels": levels, "waves": args.waves, "max_tokens": args.max_tokens,
            "temperature": 0.0, "n_ctx_per_stream": N_CTX, "threads": _threads(args.gpu),
            "gpu": args.gpu, "model": str(path), "model_name": args.model_name,
            "llorch_slots": args.llorch_slots, "server_fa": args.server_fa,
            "prompt_example": prompt(1), "label": args.label, "git": _git(),
        },
        "slots_reported": res.slots,
        "profiles": res.profiles,
        "paths": rows,
    }  # fmt: skip


def _git() -> dict[str, Any]:
    """The llorch that ran: HEAD and the files that differ from it (a shared tree moves)."""
    if os.environ.get("LLORCH_GIT_HEAD"):  # said by whoever copied the tree (a device run)
        return {"head": os.environ["LLORCH_GIT_HEAD"]}
    root = Path(__file__).parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--short", "--untracked-files=no"],
            capture_output=True, text=True, check=True,
        ).stdout.split("\n")  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return {"head": os.environ.get("LLORCH_GIT_HEAD", "unknown")}
    return {"head": head, "dirty": [line.strip() for line in dirty if line.strip()]}


def print_table(res: dict[str, Any]) -> None:
    rows = []
    for name, per in res["paths"].items():
        for level, r in per.items():
            t = r["ttft_ms"]
            engine = r.get("engine_ttft_ms", {}).get("n") and r["engine_ttft_ms"]["p50"]
            rows.append([
                name, int(level), r["tokens_per_s"], r["tokens_per_s_best"], t["p50"], t["p99"],
                engine or "-", f"{r['full']}/{r['requests']}", r["n_errors"],
            ])  # fmt: skip
    rows.sort(key=lambda row: (row[1], str(row[0])))
    print(f"slots reported by llorch's workers: {res['slots_reported']}")
    for name, prof in res.get("profiles", {}).items():
        print(
            f"profile of {name}'s worker: {prof.get('samples', 0)} samples {prof.get('error', '')}"
        )
        for thread, t in list(prof.get("threads", {}).items())[:3]:
            leaves = ", ".join(f"{leaf} {n}" for leaf, n in t["top_leaves"][:5])
            print(f"  {thread} ({t['share']:.0%}): {leaves}")
    print(table(
        ["path", "streams", "tok/s", "tok/s best wave", "TTFT p50 ms", "TTFT p99 ms",
         "worker's TTFT p50 ms", "full length", "errors"],
        rows,
    ))  # fmt: skip


def plot(res: dict[str, Any], png: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
    for name, per in res["paths"].items():
        levels = [int(k) for k in per]
        a.plot(levels, [per[k]["tokens_per_s"] for k in per], marker="o", label=name)
        b.plot(levels, [per[k]["ttft_ms"]["p50"] for k in per], marker="o", label=name)
    for ax in (a, b):
        ax.set_xscale("log", base=2)
        ax.set_xticks(res["config"]["levels"], [str(x) for x in res["config"]["levels"]])
        ax.set_xlabel("concurrent streams")
        ax.grid(alpha=0.3)
    a.set_ylabel("aggregate tokens/s")
    b.set_ylabel("TTFT p50, ms")
    b.set_yscale("log")
    a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--levels", default="1,2,4,8,16,32", help="concurrent streams, comma list")
    ap.add_argument("--waves", type=int, default=3, help="measured waves per level and path")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument(
        "--paths",
        default="llorch,llorch-slotsN,llorch-slots1,llama-server,llama_cpp.server",
        help="which to run (comma list)",
    )
    ap.add_argument(
        "--llorch-slots",
        type=int,
        default=None,
        help="also a stack with slots = N (default: the largest level)",
    )
    ap.add_argument("--server-bin", default=".bench-build/llama-server")
    ap.add_argument(
        "--server-fa",
        default="off",
        choices=["off", "on", "auto"],
        help="llama-server's flash attention (off: as the worker sets it)",
    )
    ap.add_argument("--model-path", default="", help="a GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--model-name", default=MODEL, help="its catalog name in llorch")
    ap.add_argument("--gpu", action="store_true", help="all layers on the GPU, every path")
    ap.add_argument("--logs", type=Path, default=None, help="servers' logs (default: a tmp dir)")
    ap.add_argument(
        "--profile",
        action="store_true",
        help="py-spy on llorch's worker, one extra wave at the top level",
    )
    ap.add_argument("--label", default="", help="stored with the results")
    ap.add_argument("--out", default="concurrency-cpu", help="results name under bench/results")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--png", type=Path, default=None, help="plot (default docs/img/<out>.png)")
    ap.add_argument("--replot", type=Path, default=None, help="plot and print a results JSON")
    args = ap.parse_args(argv)
    root = Path(__file__).parent.parent
    if args.replot:
        res = json.loads(args.replot.read_text())
        png = args.png or root / "docs" / "img" / f"{args.replot.stem.replace('-', '_')}.png"
        print_table(res)
        plot(res, png, _title(res))
        return
    if args.llorch_slots is None:
        args.llorch_slots = max(int(x) for x in args.levels.split(","))
    if args.model_path and args.model_name == MODEL:
        args.model_name = Path(args.model_path).stem
    args.logs = args.logs or Path(tempfile.mkdtemp(prefix="llorch-conc-logs-"))
    use_uvloop()
    try:
        res = asyncio.run(_until_sigterm(measure(args)))
    except asyncio.CancelledError:
        sys.exit(f"cut short by SIGTERM; levels done so far: {args.json or '(no --json)'}")
    out = write_results(args.out, res)
    if args.json:
        args.json.write_text(out.read_text())
    print(f"results: {out}  logs: {args.logs}", file=sys.stderr)
    print_table(res)
    with contextlib.suppress(ImportError):
        png = args.png or root / "docs" / "img" / f"{args.out.replace('-', '_')}.png"
        plot(res, png, _title(res))


async def _until_sigterm(work: Coroutine[Any, Any, dict[str, Any]]) -> dict[str, Any]:
    """SIGTERM (a `timeout`) cancels the run, so every server it started is stopped: a
    `llorch up` runs in its own session and would outlive us."""
    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def _title(res: dict[str, Any]) -> str:
    c = res["config"]
    where = "GPU" if c["gpu"] else f"CPU, {c['threads'][0]}/{c['threads'][1]} threads"
    return (
        f"{Path(c['model']).name} on {where}: {c['max_tokens']} tokens per stream, greedy, "
        f"{c['waves']} waves per level"
    )


if __name__ == "__main__":
    main()
