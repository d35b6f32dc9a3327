"""Token-path cost: N generations through a real stack (nats-server, orchestrator, CPU pool).

    python bench/token_path.py [N] [MAX_TOKENS]

Prints the first-event latency (client publish -> first stream event) p50/p90, the first-token
latency p50 and the client-side token rate while streaming. Extra env (e.g. OTEL_*) is inherited
by every process, so the same script measures the traced path.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats

from llorch_common import client
from llorch_orch.natsserver import NatsServer
from llorch_orch.stack import Stack
from schemas import End, GenerateRequest, Subjects, Token


async def main(n: int, max_tokens: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        (data / "logs").mkdir()
        server = NatsServer.start(data / "jetstream")  # no auth: the same on every version
        stack = Stack(data_dir=data, nats_url=server.url, prefix=Subjects().prefix)
        try:
            stack.spawn("orchestrator", ["llorch_orch", "orch"])
            stack.spawn("pool", ["llorch_pool", "serve", "--pool-id", "p1", "--data-dir", tmp,
                                 "--cpu"])  # fmt: skip
            await stack.wait_ready("p1")
            nc = await nats.connect(stack.nats_url)
            req = GenerateRequest(model="smollm2-135m", prompt="Once upon a time",
                                  max_tokens=max_tokens, seed=1, temperature=0.0)  # fmt: skip
            await _one(nc, req)  # warm: spawns and loads the worker
            firsts, first_tokens, tokens, stream_s = [], [], 0, 0.0
            for _ in range(n):
                first, first_token, end, t_end = await _one(nc, req)
                firsts.append(first)
                first_tokens.append(first_token)
                tokens += end.tokens_out
                stream_s += t_end - first_token
            await nc.close()
        finally:
            stack.stop()
            server.stop()
    q = statistics.quantiles(firsts, n=10)
    print(f"n={n} max_tokens={max_tokens}")
    print(f"first event ms: p50 {statistics.median(firsts) * 1e3:.2f} p90 {q[8] * 1e3:.2f}")
    print(f"first token ms: p50 {statistics.median(first_tokens) * 1e3:.2f}")
    print(f"client token rate while streaming: {tokens / stream_s:.0f} tokens/s")


async def _one(nc: nats.NATS, req: GenerateRequest) -> tuple[float, float, End, float]:
    t0 = time.perf_counter()
    first = first_token = None
    async with contextlib.aclosing(client.stream(nc, req, Subjects())) as events:
        async for event in events:
            now = time.perf_counter() - t0
            first = first if first is not None else now
            if isinstance(event, Token) and first_token is None:
                first_token = now
            if isinstance(event, End):
                return first, first_token or now, event, now  # type: ignore[return-value]
    raise RuntimeError(f"job ended with {event!r}")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]]
    asyncio.run(main(*(args + [200, 32][len(args) :])))
