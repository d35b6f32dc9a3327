"""Overhead of llorch's token path: direct llama-cpp-python vs its own HTTP server vs llorch
(over NATS, and over its HTTP edge).

    python -m bench.overhead [--rounds 60] [--threads 1]

Same GGUF (the bundled SmolLM2-135M), same prompts, seed, temperature 0, max_tokens 64, same
engine thread count everywhere. The paths run INTERLEAVED (direct, peer, llorch, edge,
edge_lean for one prompt, then the next prompt, in an order that rotates each round), so
drift in the machine hits all of them alike; warm-up rounds are discarded. Only one engine
computes at a time: the peer server and the llorch worker are loaded and sit idle while
another path runs.

- direct: in this process, the loop the worker's engine thread runs (`Llama.generate`, fresh
  KV cache per job, a detokenized piece per token), with nothing around it.
- peer: `python -m llama_cpp.server`, `/v1/completions` with stream=true, read with httpx.
- llorch: `llorch_common.client.stream` against nats-server + orchestrator + pool + worker.
- edge: llorch's HTTP edge (`llorch_http`) in front of the same stack, `/v1/completions` with
  stream=true, read with httpx exactly as the peer is.
- edge_lean: the same edge process read by a minimal HTTP/1.1 client (one kept-alive
  connection, the chunked SSE parsed by hand): what the edge itself adds, without httpx's own
  cost per request, which the edge path pays as the peer does.

TTFT: request sent -> first non-empty text seen by the client. Decode rate: (tokens - 1) /
(last token - first token), as the client receives them.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import llama_cpp
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
from llorch_orch.natsserver import free_port
from llorch_orch.stack import Stack
from schemas import End, Error, GenerateRequest, Token

MAX_TOKENS = 64
SEED = 1234
N_CTX = 2048
ENDED_POLLS, ENDED_POLL_S = 200, 0.01  # up to 2 s for a job's end to reach the orchestrator
_WORDS = (
    "The history of the lighthouse keepers on the northern coast is a story of patience, "
    "weather and small routines. Every evening the lamp was trimmed, the clockwork wound and "
    "the log written in a careful hand. "
)
SHORT = [
    "Once upon a time",
    "The capital of France is",
    "Write a haiku about the sea:",
    "def fibonacci(n):",
]
LONG = [
    f"{_WORDS * 2}Question {i}: what did the keepers write in the log? Answer:" for i in range(4)
]


@dataclass
class Run:
    ttft_ms: float
    tokens: int
    decode_tps: float  # client-side: tokens after the first / time between first and last
    total_ms: float
    text: str
    engine_ttft_ms: float = float("nan")  # llorch only: the worker's own job start -> 1st token


def _run(t0: float, times: list[float], texts: list[str]) -> Run:
    n = len(times)
    span = times[-1] - times[0] if n > 1 else float("nan")
    return Run(
        ttft_ms=(times[0] - t0) * 1000,
        tokens=n,
        decode_tps=(n - 1) / span if n > 1 else float("nan"),
        total_ms=(times[-1] - t0) * 1000,
        text="".join(texts),
    )


class Direct:
    def __init__(self, path: Path, threads: int) -> None:
        self.llm = llama_cpp.Llama(
            model_path=str(path), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads,
            n_gpu_layers=0, verbose=False,
        )  # fmt: skip

    async def __call__(self, prompt: str) -> Run:
        """What the worker's engine thread does, minus NATS: fresh KV cache, greedy, one
        detokenized piece per token, whole UTF-8 characters only."""
        llm = self.llm
        times: list[float] = []
        texts: list[str] = []
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0 = time.perf_counter()
        llm.set_seed(SEED)
        llm.reset()
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        gen = llm.generate(tokens, top_k=40, top_p=0.95, min_p=0.0, temp=0.0)
        for n, token in enumerate(gen, start=1):
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                break
            text = utf8.decode(llm.detokenize([token]))
            if text:
                times.append(time.perf_counter())
                texts.append(text)
            if n >= MAX_TOKENS:
                break
        return _run(t0, times, texts)


class Peer:
    """llama-cpp-python's own OpenAI-compatible server, the natural alternative to llorch."""

    def __init__(self, path: Path, threads: int, log: Path) -> None:
        self.port = free_port()
        cmd = [
            sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
            "--port", str(self.port), "--n_ctx", str(N_CTX), "--n_threads", str(threads),
            "--n_threads_batch", str(threads), "--n_gpu_layers", "0", "--verbose", "False",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=120)

    async def wait_ready(self) -> None:
        for _ in range(600):
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.proc.returncode}")
            try:
                if (await self.http.get("/v1/models")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("llama_cpp.server did not come up")

    def body(self, prompt: str) -> dict[str, object]:
        return {
            "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0, "seed": SEED,
            "stream": True, "repeat_penalty": 1.0, "min_p": 0.0,
        }  # fmt: skip

    async def __call__(self, prompt: str) -> Run:
        return (await self.stream(prompt))[0]

    async def stream(self, prompt: str) -> tuple[Run, httpx.Headers]:
        body = self.body(prompt)
        times: list[float] = []
        texts: list[str] = []
        t0 = time.perf_counter()
        async with self.http.stream("POST", "/v1/completions", json=body) as resp:
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                text = json.loads(line[6:])["choices"][0]["text"]
                if text:
                    times.append(time.perf_counter())
                    texts.append(text)
        return _run(t0, times, texts), resp.headers

    async def close(self) -> None:
        await self.http.aclose()
        self.proc.terminate()
        self.proc.wait(timeout=15)


class Edge(Peer):
    """llorch's OpenAI-compatible HTTP edge, a client of the same stack as `Llorch`, read the
    way the peer is read. Its fields are OpenAI's only (it refuses the peer's extras)."""

    def __init__(self, stack: Stack) -> None:
        self.owner: nats.NATS | None = None  # as the edge's identity: its jobs are its own
        self.port = free_port()
        listen = ["--listen", f"127.0.0.1:{self.port}", *stack.seed_args("client-http")]
        stack.spawn("http", ["llorch_http", *listen])
        self.http = httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.port}", timeout=120)
        self.stack = stack

    async def wait_ready(self) -> None:
        for _ in range(600):
            self.stack.check_children()
            with contextlib.suppress(httpx.TransportError):
                if (await self.http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.1)
        raise RuntimeError("the HTTP edge did not come up")

    async def __call__(self, prompt: str) -> Run:
        """As the peer, plus the worker's own TTFT of the same job (`api.jobs.get` by the job
        id the edge answers with), so the edge's cost is read within each job."""
        run, headers = await self.stream(prompt)
        if self.owner is None:
            self.owner = await nats.connect(
                self.stack.nats_url, **self.stack.credentials("client-http").connect_options()
            )
        run.engine_ttft_ms = await self._engine_ttft(self.owner, headers["x-llorch-job-id"])
        return run

    @staticmethod
    async def _engine_ttft(owner: nats.NATS, job_id: str) -> float:
        """The worker's TTFT of a job, once the orchestrator has heard of its end: the last
        event reaches the client straight from the worker, and may arrive first."""
        for _ in range(ENDED_POLLS):
            info = await client.job(owner, job_id)
            if isinstance(info, Error) or info.ttft_ms is not None:
                break
            await asyncio.sleep(ENDED_POLL_S)
        if isinstance(info, Error) or info.ttft_ms is None:
            raise RuntimeError(f"no engine TTFT for the edge's job: {info}")
        return info.ttft_ms

    def body(self, prompt: str) -> dict[str, object]:
        return {"model": MODEL, "prompt": prompt, "max_tokens": MAX_TOKENS, "temperature": 0.0,
                "seed": SEED, "stream": True}  # fmt: skip

    async def close(self) -> None:
        await self.http.aclose()  # the stack stops the process
        if self.owner is not None:
            await self.owner.close()


class LeanEdge(Edge):
    """The edge read by the least an HTTP client can do: it writes the request on a connection
    opened before the clock starts and splits the chunked SSE body itself. httpx spends
    milliseconds of its own per request on a small CPU (docs/performance.md, section 6), which
    would be counted as the edge's. (A connection kept between rounds would be closed by
    uvicorn's 5 s keep-alive while the other paths run.)"""

    def __init__(self, edge: Edge) -> None:  # the same process as `edge`: nothing to start
        self.owner, self.port, self.stack, self.http = None, edge.port, edge.stack, edge.http

    async def stream(self, prompt: str) -> tuple[Run, dict[str, str]]:  # type: ignore[override]
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            return await self._exchange(reader, writer, json.dumps(self.body(prompt)).encode())
        finally:
            writer.close()

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, body: bytes
    ) -> tuple[Run, dict[str, str]]:
        async def line() -> bytes:
            if not (read := await reader.readline()):
                raise RuntimeError("the edge closed the connection mid-answer")
            return read

        head = f"POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}"
        times: list[float] = []
        texts: list[str] = []
        t0 = time.perf_counter()
        writer.write(f"{head}\r\ncontent-type: application/json\r\n\r\n".encode() + body)
        status = await line()
        headers = {}
        while (field := await line()) != b"\r\n":
            name, _, value = field.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        if b" 200 " not in status or headers.get("transfer-encoding") != "chunked":
            raise RuntimeError(f"the edge answered {status!r} {headers}")
        pending = b""
        while size := int(await line(), 16):  # chunked: size, data, CRLF; 0 ends
            pending += (await reader.readexactly(size + 2))[:-2]
            *events, pending = pending.split(b"\n\n")
            for event in events:
                data = event.removeprefix(b"data: ")
                if data != b"[DONE]" and (text := json.loads(data)["choices"][0]["text"]):
                    times.append(time.perf_counter())
                    texts.append(text)
        return _run(t0, times, texts), headers

    async def close(self) -> None:  # the edge's client and process are `Edge.close`'s
        if self.owner is not None:
            await self.owner.close()


class Llorch:
    def __init__(self, nc: nats.NATS) -> None:
        self.nc = nc

    async def __call__(self, prompt: str) -> Run:
        request = GenerateRequest(
            model=MODEL, prompt=prompt, max_tokens=MAX_TOKENS, temperature=0.0, seed=SEED
        )
        times: list[float] = []
        texts: list[str] = []
        t0 = time.perf_counter()
        async with contextlib.aclosing(client.stream(self.nc, request, stall_s=60)) as events:
            async for event in events:
                if isinstance(event, Token) and event.text:
                    times.append(time.perf_counter())
                    texts.append(event.text)
                elif isinstance(event, Error):
                    raise RuntimeError(f"llorch job failed: {event.code}: {event.message}")
                elif isinstance(event, End):
                    run = _run(t0, times, texts)
                    run.engine_ttft_ms = event.ttft_ms
                    return run
        raise RuntimeError("stream ended without a terminal event")


Path_ = Callable[[str], Awaitable[Run]]


async def measure(args: argparse.Namespace) -> dict[str, object]:
    path = Path(args.model_path).resolve() if args.model_path else model_path()
    tmp = Path(tempfile.mkdtemp(prefix="llorch-bench-"))
    pool_args = ["--worker-threads", str(args.threads)]
    if args.model_path:  # in the pool's catalog under the bundled model's name, read in place
        subprocess.run(
            [sys.executable, "-m", "llorch_pool", "models", "add", MODEL, str(path),
             "--data-dir", str(tmp)],
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        pool_args += ["--allow-model-dir", str(path.parent)]
    stack = start_stack(tmp, ["--keep-alive", "0"], pool_args)
    (tmp / "logs").mkdir(exist_ok=True)
    peer = Peer(path, args.threads, tmp / "logs" / "peer.log")
    direct = Direct(path, args.threads)
    edge = Edge(stack)
    lean = LeanEdge(edge)
    try:
        await stack.wait_ready(POOL_ID)
        nc = await connect(stack)
        await peer.wait_ready()
        await edge.wait_ready()
        paths: dict[str, Path_] = {
            "direct": direct, "peer": peer, "llorch": Llorch(nc), "edge": edge,
            "edge_lean": lean,
        }  # fmt: skip
        prompts = [p for pair in zip(SHORT, LONG, strict=True) for p in pair]
        runs: dict[str, list[Run]] = {name: [] for name in paths}
        kinds: list[str] = []
        for i in range(args.warmup + args.rounds):
            prompt = prompts[i % len(prompts)]
            # A B C, B C A, C A B...: no path always follows the same one (a job's end still
            # busies the orchestrator and the bus when the next path's request arrives)
            order = list(paths)[i % len(paths) :] + list(paths)[: i % len(paths)]
            for name in order:
                result = await paths[name](prompt)
                if i >= args.warmup:
                    runs[name].append(result)
            if i >= args.warmup:
                kinds.append("short" if prompt in SHORT else "long")
            print(f"\rround {i + 1}/{args.warmup + args.rounds}", end="", file=sys.stderr)
        print(file=sys.stderr)
        await nc.close()
    finally:
        await peer.close()
        await edge.close()
        await lean.close()
        stack.stop()
    return report(runs, kinds, args)


def _paired(a: list[Run], b: list[Run], field: str, op: str) -> list[float]:
    out = []
    for x, y in zip(a, b, strict=True):
        u, v = getattr(x, field), getattr(y, field)
        out.append(u - v if op == "-" else u / v)
    return out


def _within_job(a: list[Run], b: list[Run]) -> list[float]:
    """Per round: `a`'s client TTFT beyond its worker's, less `b`'s."""
    return [
        (x.ttft_ms - x.engine_ttft_ms) - (y.ttft_ms - y.engine_ttft_ms)
        for x, y in zip(a, b, strict=True)
    ]


def report(runs: dict[str, list[Run]], kinds: list[str], args: argparse.Namespace) -> dict:
    d, p, o, e = runs["direct"], runs["peer"], runs["llorch"], runs["edge"]
    same_text = sum(
        len({r.text for r in rounds}) == 1 for rounds in zip(*runs.values(), strict=True)
    )
    paths = {}
    for name, rs in runs.items():
        by_kind = {
            k: [r.ttft_ms for r, k2 in zip(rs, kinds, strict=True) if k2 == k] for k in kinds
        }
        paths[name] = {
            "ttft_ms": summary([r.ttft_ms for r in rs]),
            "ttft_short_ms": summary(by_kind["short"]),
            "ttft_long_ms": summary(by_kind["long"]),
            "decode_tps": summary([r.decode_tps for r in rs]),
            "tokens": summary([r.tokens for r in rs]),
            "ttft_samples_ms": [r.ttft_ms for r in rs],
        }  # fmt: skip
    paired = {
        "ttft_llorch_minus_direct_ms": summary(_paired(o, d, "ttft_ms", "-")),
        "ttft_llorch_over_peer": summary(_paired(o, p, "ttft_ms", "/")),
        "ttft_peer_minus_direct_ms": summary(_paired(p, d, "ttft_ms", "-")),
        # same job, same run: client-seen TTFT minus the worker's own (execute -> 1st token)
        "llorch_client_minus_engine_ttft_ms": summary([r.ttft_ms - r.engine_ttft_ms for r in o]),
        "tps_llorch_over_direct": summary(_paired(o, d, "decode_tps", "/")),
        "tps_llorch_over_peer": summary(_paired(o, p, "decode_tps", "/")),
        # the HTTP edge: what it adds to the NATS path, and how it compares with the peer
        "ttft_edge_minus_llorch_ms": summary(_paired(e, o, "ttft_ms", "-")),
        # within each job, as for llorch: what the edge adds is the difference of the two
        "edge_client_minus_engine_ttft_ms": summary([r.ttft_ms - r.engine_ttft_ms for r in e]),
        # the same, read by a minimal HTTP client: the edge's own cost, without httpx's
        "edge_lean_client_minus_engine_ttft_ms": summary(
            [r.ttft_ms - r.engine_ttft_ms for r in runs["edge_lean"]]
        ),
        # the target's figure, paired per round: what HTTP adds to NATS within each job
        "edge_minus_llorch_within_job_ms": summary(_within_job(e, o)),
        "edge_lean_minus_llorch_within_job_ms": summary(_within_job(runs["edge_lean"], o)),
        "ttft_edge_over_peer": summary(_paired(e, p, "ttft_ms", "/")),
        "tps_edge_over_llorch": summary(_paired(e, o, "decode_tps", "/")),
        "tps_edge_over_peer": summary(_paired(e, p, "decode_tps", "/")),
    }
    return {
        "config": {
            "rounds": args.rounds, "warmup": args.warmup, "threads": args.threads,
            "max_tokens": MAX_TOKENS, "seed": SEED, "n_ctx": N_CTX, "label": args.label,
            "model_path": args.model_path or "bundled",
        },
        "identical_text_rounds": same_text,
        "kinds": kinds,
        "paths": paths,
        "paired": paired,
    }  # fmt: skip


def print_tables(res: dict) -> None:
    rows = []
    for name, r in res["paths"].items():
        t, s, lg, tps = r["ttft_ms"], r["ttft_short_ms"], r["ttft_long_ms"], r["decode_tps"]
        rows.append(
            [name, t["p50"], t["p95"], t["p99"], s["p50"], lg["p50"], tps["p50"], tps["mean"]]
        )
    print(
        f"identical text on all paths: {res['identical_text_rounds']}"
        f"/{res['config']['rounds']} rounds"
    )
    print(table(
        ["path", "TTFT p50 ms", "p95", "p99", "short p50", "long p50", "tok/s p50", "tok/s mean"],
        rows,
    ))  # fmt: skip
    print()
    pr = [[k, v["p50"], v["p95"], v["p99"], v["mean"]] for k, v in res["paired"].items()]
    print(table(["paired (per round)", "p50", "p95", "p99", "mean"], pr))


def plot(res: dict, path: Path) -> None:
    """TTFT distribution per path, short and long prompts side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = res["kinds"]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=100)
    for ax, kind in zip(axes, ("short", "long"), strict=True):
        data = [
            [t for t, k in zip(r["ttft_samples_ms"], kinds, strict=True) if k == kind]
            for r in res["paths"].values()
        ]
        ax.boxplot(data, tick_labels=list(res["paths"]), showfliers=True)
        ax.set_title(f"{kind} prompts")
        ax.set_ylabel("TTFT, ms")
    fig.suptitle(f"time to first token, {res['config']['threads']} engine thread(s)")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=40, help="measured rounds (one prompt each)")
    ap.add_argument("--warmup", type=int, default=4, help="discarded rounds")
    ap.add_argument("--threads", type=int, default=1, help="engine threads on every path")
    ap.add_argument("--label", default="", help="stored with the results (e.g. before/after)")
    ap.add_argument(
        "--model-path", default="", help="a GGUF instead of the bundled SmolLM2 (every path)"
    )
    ap.add_argument("--out", default="overhead", help="results file name under bench/results")
    args = ap.parse_args()
    use_uvloop()
    res = asyncio.run(measure(args))
    path = write_results(args.out, res)
    plot(res, Path(__file__).parent.parent / "docs" / "img" / "ttft_overhead.png")
    print(f"results: {path}", file=sys.stderr)
    print_tables(res)


if __name__ == "__main__":
    main()
