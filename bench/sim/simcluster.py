"""SIMULATED ENGINE — for the control-plane scale benchmarks only; never a product default.

Pools that heartbeat and workers that speak the worker protocol, with no model behind them:
execute -> ack; `started`, `token`s at a set rate, `end` on the job's stream; `started`,
`progress`, `finished` job statuses. Many pools (and their workers) live in one process; run
several processes with `--shard i/n` to spread them over cores.

    python -m bench.sim.simcluster --nats-url URL --pools 125 --devices 8 --rate 50

The orchestrator cannot tell these from real pools and workers: it adopts the workers it
finds in the heartbeats (as after an orchestrator restart) and dispatches to them.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas import (
    DEFAULT_PREFIX,
    Ack,
    CancelRequest,
    Device,
    End,
    Error,
    ErrorCode,
    Execute,
    Heartbeat,
    JobStatus,
    ModelInfo,
    Started,
    Subjects,
    Token,
    WorkerInfo,
    decoder,
    encode,
)

GiB = 1 << 30
SIM_MODEL = "sim-model"  # the model every simulated worker serves
SIM_SPARE_MODEL = "sim-spare"  # in the catalog, no worker: jobs for it queue (spawns get an ack)
PROGRESS_S = 0.25  # as the real worker's --progress-interval default
_execute = decoder(Execute)
_cancel = decoder(CancelRequest)
_ACK = encode(Ack())


def pool_id(i: int) -> str:
    return f"sim-p{i:03d}"


def worker_id(pool: int, device: int) -> str:
    return f"sim-p{pool:03d}-w{device}"


def _model(name: str) -> ModelInfo:
    return ModelInfo(
        name=name, sha256="0" * 64, size_bytes=100 << 20, n_ctx_train=8192, n_layers=30,
        kv_bytes_per_token=1024,
    )  # fmt: skip


@dataclass
class SimWorker:
    worker_id: str
    device: int
    busy: bool = False
    cancel: bool = False


@dataclass
class SimPool:
    index: int
    devices: int
    seq: int = 0
    workers: dict[str, SimWorker] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for d in range(self.devices):
            wid = worker_id(self.index, d)
            self.workers[wid] = SimWorker(wid, d)

    def heartbeat(self, interval_s: float) -> Heartbeat:
        self.seq += 1
        devices = [
            Device(
                index=d, uuid=f"GPU-sim-{self.index}-{d}", name="SIM-GPU", kind="gpu",
                total_bytes=80 * GiB, free_bytes=79 * GiB, used_bytes=1 * GiB,
            )
            for d in range(self.devices)
        ]  # fmt: skip
        workers = [
            WorkerInfo(
                worker_id=w.worker_id, model=SIM_MODEL, device=w.device, pid=os.getpid(),
                state="busy" if w.busy else "ready", memory_bytes=1 * GiB,
            )
            for w in self.workers.values()
        ]  # fmt: skip
        return Heartbeat(
            pool_id=pool_id(self.index), ts=time.time(), seq=self.seq, interval_s=interval_s,
            devices=devices, workers=workers, models=[_model(SIM_MODEL), _model(SIM_SPARE_MODEL)],
        )  # fmt: skip


class SimCluster:
    def __init__(
        self,
        nc: Client,
        pools: list[int],
        devices: int,
        rate: float,
        interval_s: float,
        subjects: Subjects | None = None,
    ) -> None:
        self.nc = nc
        self.subjects = subjects or Subjects()
        self.pools = {pool_id(i): SimPool(i, devices) for i in pools}
        self.workers = {w.worker_id: w for p in self.pools.values() for w in p.workers.values()}
        self.rate = rate  # tokens/s per simulated engine; 0 = as fast as possible
        self.interval_s = interval_s
        self.tasks: set[asyncio.Task[None]] = set()
        self.jobs_done = 0

    async def start(self) -> None:
        s = self.subjects
        await self.nc.subscribe(f"{s.prefix}.worker.*.execute", cb=self._on_execute)
        await self.nc.subscribe(f"{s.prefix}.worker.*.cancel", cb=self._on_cancel)
        for p in self.pools:
            # spawn/stop of the spare model: acknowledged, never carried out
            await self.nc.subscribe(s.spawn(p), cb=self._ack)
            await self.nc.subscribe(s.stop(p), cb=self._ack)
        await self.nc.flush()

    async def heartbeats(self) -> None:
        """Each pool every interval, the pools spread evenly over the interval."""
        pools = list(self.pools.values())
        step = self.interval_s / max(1, len(pools))
        loop = asyncio.get_running_loop()
        t = loop.time()
        while True:
            for pool in pools:
                hb = pool.heartbeat(self.interval_s)
                await self.nc.publish(self.subjects.heartbeat(hb.pool_id), encode(hb))
                t += step
                await asyncio.sleep(max(0.0, t - loop.time()))

    async def _ack(self, msg: Msg) -> None:
        await msg.respond(_ACK)

    async def _on_cancel(self, msg: Msg) -> None:
        wid = msg.subject.split(".")[-2]
        worker = self.workers.get(wid)
        if worker is None:
            return
        worker.cancel = worker.busy and bool(_cancel(msg.data).job_id)
        await msg.respond(_ACK)

    async def _on_execute(self, msg: Msg) -> None:
        worker = self.workers.get(msg.subject.split(".")[-2])
        if worker is None:
            return  # another shard's worker
        if worker.busy:
            busy = Error(code=ErrorCode.WORKER_BUSY, message="busy", retriable=True)
            await msg.respond(encode(busy))
            return
        job = _execute(msg.data)
        worker.busy, worker.cancel = True, False
        await msg.respond(_ACK)
        task = asyncio.create_task(self._run(worker, job, msg.headers))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _run(self, worker: SimWorker, job: Execute, headers: dict[str, str] | None) -> None:
        """The worker's stream protocol, with `asyncio.sleep` where the engine would decode."""
        pub, stream = self.nc.publish, job.stream
        status_subject = self.subjects.job_status(job.job_id)
        seq = job.seq
        t0 = time.monotonic()

        async def status(state: str, seq: int, code: ErrorCode | None = None) -> None:
            js = JobStatus(
                job_id=job.job_id, worker_id=worker.worker_id, state=state,  # type: ignore[arg-type]
                seq=seq, tokens_out=n, code=code,
            )  # fmt: skip
            await pub(status_subject, encode(js), headers=headers)

        n = 0
        if seq > job.resume_after:
            started = Started(
                seq=seq, job_id=job.job_id, worker_id=worker.worker_id, model=job.model,
                seed=job.seed,
            )  # fmt: skip
            await pub(stream, encode(started), headers=headers)
        await status("started", seq)
        last_progress = t0
        period = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = t0
        while n < job.max_tokens and not worker.cancel:
            if period:
                next_at += period
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            n += 1
            seq += 1
            if seq > job.resume_after:
                await pub(stream, encode(Token(seq=seq, text=f" t{n}")), headers=headers)
            now = time.monotonic()
            if now - last_progress >= PROGRESS_S:
                last_progress = now
                await status("progress", seq)
        seq += 1
        now_ms = (time.monotonic() - t0) * 1000
        if worker.cancel:
            err = Error(code=ErrorCode.CANCELLED, message="cancelled", seq=seq, job_id=job.job_id)
            await pub(stream, encode(err), headers=headers)
            await status("failed", seq, ErrorCode.CANCELLED)
        else:
            end = End(
                seq=seq, job_id=job.job_id, finish_reason="length", tokens_in=4, tokens_out=n,
                ttft_ms=period * 1000, total_ms=now_ms,
            )  # fmt: skip
            await pub(stream, encode(end), headers=headers)
            await status("finished", seq)
        worker.busy = False
        self.jobs_done += 1


async def _main(args: argparse.Namespace) -> None:
    shard, shards = (int(x) for x in args.shard.split("/"))
    nc = await nats.connect(args.nats_url, name=f"sim-cluster-{shard}", pending_size=64 << 20)
    pools = [i for i in range(args.pools) if i % shards == shard]
    sim = SimCluster(nc, pools, args.devices, args.rate, args.interval, Subjects(args.prefix))
    await sim.start()
    beats = asyncio.create_task(sim.heartbeats())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"sim shard {shard}/{shards}: {len(pools)} pools ready", flush=True)
    await stop.wait()
    beats.cancel()
    await nc.close()


def main() -> None:
    ap = argparse.ArgumentParser(description="SIMULATED ENGINE pools and workers (benchmarks)")
    ap.add_argument("--nats-url", required=True)
    ap.add_argument("--prefix", default=DEFAULT_PREFIX)
    ap.add_argument("--pools", type=int, default=125)
    ap.add_argument("--devices", type=int, default=8, help="devices (one worker each) per pool")
    ap.add_argument("--rate", type=float, default=50.0, help="tokens/s per engine; 0 = no wait")
    ap.add_argument("--interval", type=float, default=1.0, help="heartbeat interval, s")
    ap.add_argument("--shard", default="0/1", help="i/n: this process runs pools i, i+n, ...")
    args = ap.parse_args()
    from bench.common import use_uvloop

    use_uvloop()
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
