"""`llorch orch`: the orchestrator process."""

from __future__ import annotations

import asyncio
import logging
import signal

import nats

from schemas import Subjects, observe
from schemas.connect import DRAIN_TIMEOUT_S, Credentials

from . import batch
from .core import Core, OrchConfig
from .service import OrchestratorService

log = logging.getLogger("llorch.orch")


async def serve(
    nats_url: str,
    cfg: OrchConfig,
    subjects: Subjects,
    batch_cfg: batch.BatchConfig | None = None,
    credentials: Credentials | None = None,
    metrics_port: int | None = None,
) -> None:
    observe.setup("llorch-orchestrator", metrics_port)
    credentials = credentials or Credentials()
    log.info("connecting to %s as %s", nats_url, credentials.describe())
    nc = await nats.connect(
        nats_url,
        name="llorch-orchestrator",
        max_reconnect_attempts=-1,
        drain_timeout=DRAIN_TIMEOUT_S,  # shutdown flushes what is in flight, never hangs
        **credentials.connect_options(),
    )
    service = OrchestratorService(nc, Core(cfg), subjects)
    await service.start()
    runner = await batch.start(service, batch_cfg or batch.BatchConfig())
    log.info("orchestrator serving on %s (prefix %s)", nats_url, subjects.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if runner is not None:
        await runner.stop()
    await service.stop()
    await nc.drain()
