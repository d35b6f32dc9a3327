"""Streaming fan-out: 64 concurrent interactive streams through the real orchestrator and
nats-server, served by SIMULATED ENGINE workers (bench/sim/) at a fixed token rate.

    python -m bench.fanout [--streams 64] [--rates 50,200] [--tokens 256]

Checks, per stream, the raw events as they arrive (no client-side de-duplication): seq starts
at 0 and rises by exactly one per event (none lost, none reordered), one terminal event, and
the delivered token rate against the engines' rate.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bench.common import cpu_seconds, start_stack, summary, table, use_uvloop, write_results
from bench.controlplane import ORCH_TOML, until_workers
from bench.sim.simcluster import SIM_MODEL
from schemas import End, Error, Event, GenerateRequest, Subjects, Token, decoder, encode

_event = decoder(Event)


@dataclass
class Stream:
    sent: float
    seqs: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    terminal: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)

    def on(self, event: Event) -> None:
        self.seqs.append(event.seq if event.seq is not None else -1)
        if isinstance(event, Token):
            self.token_times.append(time.perf_counter())
        elif isinstance(event, End | Error):
            self.terminal += 1
            self.done.set()

    @property
    def in_order(self) -> bool:
        return self.seqs == list(range(len(self.seqs)))

    @property
    def rate(self) -> float:
        t = self.token_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) > 1 else float("nan")


async def run_rate(args: argparse.Namespace, rate: float) -> dict[str, object]:
    tmp = Path(tempfile.mkdtemp(prefix="llorch-fanout-"))
    (tmp / "orch.toml").write_text(ORCH_TOML)
    stack = start_stack(tmp, ["--config", str(tmp / "orch.toml")], auth=False)
    pools = (args.streams + 7) // 8
    cmd = [
        sys.executable, "-m", "bench.sim.simcluster", "--nats-url", stack.nats_url,
        "--pools", str(pools), "--devices", "8", "--rate", str(rate),
    ]  # fmt: skip
    sim = subprocess.Popen(cmd, stdout=(tmp / "logs" / "sim.log").open("ab"))
    try:
        nc = await nats.connect(stack.nats_url, pending_size=256 << 20)
        await until_workers(nc, pools * 8)
        inbox = nc.new_inbox()
        streams: dict[str, Stream] = {}

        async def on_msg(msg: Msg) -> None:
            streams[msg.subject.rsplit(".", 1)[1]].on(_event(msg.data))

        await nc.subscribe(f"{inbox}.*", cb=on_msg, pending_msgs_limit=-1)
        orch_pid, nats_pid = stack.children[0][1].pid, stack.server.proc.pid  # type: ignore[union-attr]
        c0 = {p: cpu_seconds(p) for p in (orch_pid, nats_pid, sim.pid)}
        t0 = time.perf_counter()
        for i in range(args.streams):
            streams[str(i)] = Stream(time.perf_counter())
            req = GenerateRequest(model=SIM_MODEL, prompt="hi", max_tokens=args.tokens)
            await nc.publish(Subjects().generate, encode(req), reply=f"{inbox}.{i}")
        await asyncio.wait_for(asyncio.gather(*(s.done.wait() for s in streams.values())), 300)
        wall = time.perf_counter() - t0
        cpu = {p: (cpu_seconds(p) - c) / wall * 100 for p, c in c0.items()}
        await nc.close()
    finally:
        sim.terminate()
        sim.wait()
        stack.stop()
    ss = list(streams.values())
    tokens = sum(len(s.token_times) for s in ss)
    first = min(s.token_times[0] for s in ss if s.token_times)
    last = max(s.token_times[-1] for s in ss if s.token_times)
    return {
        "engine_rate": rate,
        "streams": len(ss),
        "tokens_per_stream": args.tokens,
        "tokens_delivered": tokens,
        "tokens_expected": args.tokens * len(ss),
        "streams_in_order": sum(s.in_order for s in ss),
        "streams_one_terminal": sum(s.terminal == 1 for s in ss),
        "per_stream_rate": summary([s.rate for s in ss]),
        "aggregate_rate": tokens / (last - first),
        "ttft_ms": summary([(s.token_times[0] - s.sent) * 1000 for s in ss if s.token_times]),
        "cpu_pct": {
            "orchestrator": cpu[orch_pid],
            "nats-server": cpu[nats_pid],
            "sim": cpu[sim.pid],
        },
    }


def print_tables(res: dict) -> None:
    rows = []
    for r in res["runs"]:
        rows.append([
            r["engine_rate"], r["streams"], f"{r['tokens_delivered']}/{r['tokens_expected']}",
            f"{r['streams_in_order']}/{r['streams']}",
            f"{r['streams_one_terminal']}/{r['streams']}",
            r["per_stream_rate"]["p50"], r["per_stream_rate"]["p50"] / r["engine_rate"],
            r["per_stream_rate"]["mean"] * r["streams"], r["aggregate_rate"],
            r["cpu_pct"]["orchestrator"], r["cpu_pct"]["nats-server"],
        ])  # fmt: skip
    print(table(
        ["engine tok/s", "streams", "tokens", "seq in order", "one terminal", "stream tok/s p50",
         "/ engine", "sum of stream rates", "aggregate tok/s", "orch CPU %", "nats CPU %"],
        rows,
    ))  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--streams", type=int, default=64)
    ap.add_argument("--rates", default="50,200", help="engine tokens/s, one run per value")
    ap.add_argument("--tokens", type=int, default=256, help="max_tokens of every stream")
    ap.add_argument("--out", default="fanout")
    args = ap.parse_args()
    use_uvloop()
    runs = [asyncio.run(run_rate(args, float(r))) for r in args.rates.split(",")]
    res = {"config": vars(args), "runs": runs}
    print(f"results: {write_results(args.out, res)}", file=sys.stderr)
    print_tables(res)


if __name__ == "__main__":
    main()
