"""Failover: how long users wait for service when the leading orchestrator or a NATS node dies.

    python -m bench.failover [--runs 10] [--lease-ttl 3] [--only leader|node]

`leader`: one nats-server with auth (as `llorch up` starts it), a CPU pool, orchestrators A
and B (`llorch orch --name`). Each run asks `api.state` who leads, kills that orchestrator
with SIGKILL and at once sends one request with llorch's client (which sends it again while
no orchestrator answers); the figure is the time from the kill to that request's `end`, and
from the kill to the new lead (`Leadership.since`). The killed one is started again and waits
as the standby of the next run.

`node`: a cluster of three nats-servers (the configs `llorch nats-config --node` writes), the
pool and both orchestrators connected to all three. Each run kills (SIGKILL) the server the
leading orchestrator is connected to, and times one request as above (the client knows all
three servers); the server is started again and the cluster is whole before the next run.

Target (issue 15): both ≤ lease TTL + 1 s. Writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client

from bench.common import MODEL, connect, start_stack, summary, table, use_uvloop, write_results
from llorch_common import client
from llorch_orch.lease import DEFAULT_TTL_S
from llorch_orch.stack import Stack
from schemas import DEFAULT_PREFIX, ClusterState, End, GenerateRequest, Leadership

NAMES = {"A": "orchestrator", "B": "orchestrator-b"}  # orchestrator name -> child name


async def leader(nc: Client) -> Leadership:
    """The leader as `api.state` reports it (asked again while none answers)."""
    async with asyncio.timeout(120):
        while True:
            with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError):
                state = await client.state(nc, timeout=1, ready_s=0)
                if isinstance(state, ClusterState) and state.leader is not None:
                    return state.leader
            await asyncio.sleep(0.05)  # nothing to await: nobody answers yet


async def served(nc: Client) -> float:
    """Seconds until one new request ends (sent again by the client while none answers)."""
    started = time.monotonic()
    request = GenerateRequest(model=MODEL, prompt="Hi", max_tokens=1, temperature=0)
    events = [e async for e in client.stream(nc, request, ready_s=120, stall_s=120)]
    assert isinstance(events[-1], End), events[-1]
    return time.monotonic() - started


Undo = Callable[[], Awaitable[None]]


async def failovers(
    nc: Client, runs: int, strike: Callable[[str], Awaitable[Undo]]
) -> list[dict[str, float]]:
    """`runs` times: `strike(the leader's name)` kills something and returns how to bring it
    back; recorded are the seconds from the kill to the first request served, and to the
    new lead (None when the leader kept its lead)."""
    out: list[dict[str, float]] = []
    for run in range(runs):
        old = await leader(nc)
        wall, t0 = time.time(), time.monotonic()
        undo = await strike(old.orchestrator)
        await served(nc)
        served_s = time.monotonic() - t0
        new = await leader(nc)
        lead_s = new.since - wall if new.epoch != old.epoch else float("nan")
        print(f"run {run}: served after {served_s:.2f} s; lead {old.orchestrator} "
              f"(epoch {old.epoch}) -> {new.orchestrator} (epoch {new.epoch}) after "
              f"{lead_s:.2f} s", flush=True)  # fmt: skip
        out.append({"served_s": served_s, "lead_s": lead_s})
        await undo()
    return out


def orchestrator(stack: Stack, name: str, ttl: float) -> None:
    args = ["llorch_orch", "orch", "--name", name, "--lease-ttl", f"{ttl:g}"]
    stack.spawn(NAMES[name], [*args, *stack.seed_args("orchestrator")])


async def standing_by(stack: Stack, name: str, seen: int) -> None:
    """Until orchestrator `name` has logged more "standing by" lines than `seen`."""
    log = stack.log_file(NAMES[name])
    async with asyncio.timeout(60):
        while _stand_bys(log) <= seen:
            await asyncio.sleep(0.05)  # a log file has no event to await


def _stand_bys(log: Path) -> int:
    return log.read_text(errors="replace").count("standing by") if log.exists() else 0


async def leader_kills(runs: int, ttl: float, data_dir: Path) -> list[dict[str, float]]:
    lease = ["--name", "A", "--lease-ttl", f"{ttl:g}"]
    stack = start_stack(data_dir, lease, pool_args=["--heartbeat-interval", "0.5"])
    try:
        orchestrator(stack, "B", ttl)
        nc = await connect(stack)

        async def strike(name: str) -> Undo:
            kill(stack, NAMES[name])
            seen = _stand_bys(stack.log_file(NAMES[name]))

            async def undo() -> None:
                orchestrator(stack, name, ttl)
                await standing_by(stack, name, seen)

            return undo

        return await _runs(nc, runs, strike)
    finally:
        stack.stop()


async def node_kills(runs: int, ttl: float, data_dir: Path) -> list[dict[str, float]]:
    from tests.cluster.conftest import running_cluster  # the tests' 3-server cluster

    async with running_cluster(data_dir / "nats") as cluster:
        stack = Stack(data_dir, cluster.url_list, DEFAULT_PREFIX, creds_dir=cluster.creds_dir)
        (data_dir / "logs").mkdir(parents=True, exist_ok=True)
        try:
            for name in NAMES:
                orchestrator(stack, name, ttl)
            pool = ["llorch_pool", "serve", "--pool-id", "p1", "--data-dir", str(data_dir),
                    "--cpu", "--heartbeat-interval", "0.5", *stack.seed_args("pool-p1"),
                    *stack.seed_args("worker-p1", "--worker-nkey-seed")]  # fmt: skip
            stack.spawn("pool", pool)
            nc = await client.connect(cluster.url_list, stack.credentials("client-cli"))

            async def strike(name: str) -> Undo:
                node = await cluster.node_of(f"llorch-orchestrator-{name}")
                cluster.kill(node)

                async def undo() -> None:
                    await cluster.restart(node)

                return undo

            return await _runs(nc, runs, strike)
        finally:
            stack.stop()


async def _runs(
    nc: Client, runs: int, strike: Callable[[str], Awaitable[Undo]]
) -> list[dict[str, float]]:
    try:
        await served(nc)  # the worker loaded: every run times the failover, not a cold start
        return await failovers(nc, runs, strike)
    finally:
        await nc.close()


def kill(stack: Stack, name: str) -> None:
    proc = next(proc for n, proc in stack.children if n == name)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--lease-ttl", type=float, default=DEFAULT_TTL_S)
    p.add_argument("--only", choices=["leader", "node"])
    args = p.parse_args(argv)
    use_uvloop()
    return asyncio.run(_main(args))


async def _main(args: argparse.Namespace) -> int:
    kinds = {"leader": leader_kills, "node": node_kills}
    results: dict[str, object] = {"lease_ttl_s": args.lease_ttl, "runs": args.runs}
    rows = []
    for kind, measure in kinds.items():
        if args.only not in (None, kind):
            continue
        with tempfile.TemporaryDirectory(prefix=f"llorch-failover-{kind}-") as tmp:
            runs = await measure(args.runs, args.lease_ttl, Path(tmp))
        served_s = [r["served_s"] for r in runs]
        lead_s = [r["lead_s"] for r in runs if r["lead_s"] == r["lead_s"]]  # not NaN
        results[kind] = {"runs": runs, "served_s": summary(served_s), "lead_s": summary(lead_s)}
        target = args.lease_ttl + 1
        rows.append([kind, len(runs), f"{summary(served_s)['p50']:.2f}", f"{max(served_s):.2f}",
                     f"{summary(lead_s)['p50']:.2f}" if lead_s else "-", f"{target:g}",
                     "met" if max(served_s) <= target else "NOT met"])  # fmt: skip
    print(table(["kill", "runs", "served p50 s", "max s", "new lead p50 s", "target s", ""], rows))
    print(f"wrote {write_results('failover', results)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
