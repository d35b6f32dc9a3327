"""The worker's engine alone (no NATS, no service, no client): aggregate tokens/s at N
concurrent sequences and where a step's time goes, with flash attention off (the worker's
default, as llama-cpp-python's `Llama`) and on.

    python -m bench.engine_step [--model-path P] [--gpu] [--levels 1,16,32]
                                [--max-tokens 128] [--waves 2] [--flash-attn off,on]
                                [--threads N] [--slots N]

One `Engine` per flash-attention setting, with as many slots as the largest level (as a
worker on a GPU gets by default) or `--slots`, the worker's n_ctx per slot and step budget.
At each level: one warm-up wave (8 tokens each), then `--waves` waves of N greedy jobs
started together, each prompt led by a number never used before (bench.concurrency's
prompts). The engine's own
methods are timed on its thread:

- decode: building the batch, `llama_decode` and then `llama_synchronize` (the GPU's work,
  which would otherwise be waited for by the first read of the logits);
- pick: the one argmax over the step's logits (greedy);
- tokens: per sequence, the token's bookkeeping, detokenize, stop/UTF-8 checks and the hand
  over (here: a list append);
- other: the rest of the step (cancel checks, planning, the loop itself).

Writes bench/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import llama_cpp

from bench.common import model_path, table, write_results
from bench.concurrency import N_CTX, WARMUP_TOKENS, prompt
from llorch_worker.engine import Engine
from llorch_worker.outcome import Finished, Item
from schemas import Execute


@dataclass
class Timers:
    """Seconds spent in each timed part, and steps (decodes), since the last reset."""

    parts: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def reset(self) -> None:
        self.parts, self.steps = {}, 0

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] = self.parts.get(part, 0.0) + seconds


def instrument(engine: Engine, timers: Timers) -> None:
    """Wrap the engine's step parts in timers (the engine thread calls them via `self`)."""

    def timed(part: str, fn: Callable[..., Any], sync: bool = False) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            t0 = time.perf_counter()
            out = fn(*args)
            if sync:
                llama = engine._llama
                assert llama is not None
                llama_cpp.llama_synchronize(llama.ctx)
                timers.steps += 1
            timers.add(part, time.perf_counter() - t0)
            return out

        return call

    engine._decode = timed("decode", engine._decode, sync=True)  # type: ignore[method-assign]
    engine._greedy_picks = timed("pick", engine._greedy_picks)  # type: ignore[method-assign]
    engine._sample = timed("tokens", engine._sample)  # type: ignore[method-assign]
    engine._step = timed("step", engine._step)  # type: ignore[method-assign]


async def wave(engine: Engine, level: int, max_tokens: int, first: int) -> tuple[float, int]:
    """N jobs started together; (wall seconds, tokens generated)."""
    loop = asyncio.get_running_loop()
    jobs = [
        Execute(
            job_id=f"j{first + i}", model="bench", prompt=prompt(first + i),
            max_tokens=max_tokens, temperature=0.0, top_p=1.0, top_k=0, seed=1, stream="_",
        )
        for i in range(level)
    ]  # fmt: skip
    prompts = [await engine.prepare(job) for job in jobs]
    done: list[asyncio.Future[int]] = [loop.create_future() for _ in jobs]

    def deliverer(i: int) -> Callable[[Item], None]:
        tokens = 0

        def deliver(item: Item) -> None:
            nonlocal tokens
            if isinstance(item, str):
                tokens += 1
            else:
                assert isinstance(item, Finished), item
                loop.call_soon_threadsafe(done[i].set_result, tokens)

        return deliver

    t0 = time.perf_counter()
    for i, (job, tokens) in enumerate(zip(jobs, prompts, strict=True)):
        engine.start(job, tokens, threading.Event(), deliverer(i))
    made = sum(await asyncio.gather(*done))
    return time.perf_counter() - t0, made


async def measure_setting(args: argparse.Namespace, flash_attn: bool) -> list[dict[str, Any]]:
    levels = [int(n) for n in args.levels.split(",")]
    path, slots = Path(args.model_path), args.slots or max(levels)
    engine = Engine(path, N_CTX, args.gpu, args.threads, slots=slots, flash_attn=flash_attn)
    await engine.load()
    timers = Timers()
    instrument(engine, timers)
    rows, n = [], 0
    try:
        for level in levels:
            await wave(engine, level, WARMUP_TOKENS, n)
            n += level
            timers.reset()
            wall = made = 0.0
            for _ in range(args.waves):
                w, m = await wave(engine, level, args.max_tokens, n)
                n, wall, made = n + level, wall + w, made + m
            steps = max(timers.steps, 1)
            per_step = {k: v / steps * 1e3 for k, v in timers.parts.items()}
            step_ms = per_step.pop("step", 0.0)
            other = step_ms - sum(per_step.values())
            rows.append({
                "flash_attn": flash_attn, "level": level, "tokens_per_s": made / wall,
                "steps": timers.steps, "wall_ms_per_step": wall / steps * 1e3,
                "step_ms": step_ms, **{f"{k}_ms": v for k, v in per_step.items()},
                "other_ms": other,
            })  # fmt: skip
            r = rows[-1]
            print(
                f"fa={'on' if flash_attn else 'off'} N={level}: {r['tokens_per_s']:.0f} tok/s, "
                f"{r['wall_ms_per_step']:.2f} ms/step (decode {r.get('decode_ms', 0):.2f}, "
                f"pick {r.get('pick_ms', 0):.3f}, tokens {r.get('tokens_ms', 0):.3f}, "
                f"other {other:.3f})",
                flush=True,
            )
    finally:
        await asyncio.to_thread(engine.close)
    return rows


async def measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for setting in args.flash_attn.split(","):
        rows += await measure_setting(args, setting == "on")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default="", help="a GGUF (default: the bundled SmolLM2)")
    ap.add_argument("--gpu", action="store_true", help="all layers on the GPU")
    ap.add_argument("--levels", default="1,16,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--waves", type=int, default=2)
    ap.add_argument("--flash-attn", default="off,on", help="settings to run, comma list")
    ap.add_argument(
        "--threads", type=int, default=None, help="one token and batches (default: the worker's)"
    )
    ap.add_argument("--slots", type=int, default=0, help="of the engine (default: top level)")
    ap.add_argument("--out", default="engine_step")
    args = ap.parse_args()
    args.model_path = args.model_path or str(model_path())
    rows = asyncio.run(measure(args))
    cols = ["flash_attn", "level", "tokens_per_s", "wall_ms_per_step", "decode_ms", "pick_ms",
            "tokens_ms", "other_ms"]  # fmt: skip
    print(table(cols, [[r.get(c, 0.0) for c in cols] for r in rows]))
    path = write_results(args.out, {"args": vars(args), "rows": rows})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
