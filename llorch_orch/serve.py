"""`llorch orch`: the orchestrator process."""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
from collections.abc import Iterable
from pathlib import Path

import nats

from llorch_common import observe
from llorch_common.connect import Credentials
from llorch_common.lifeline import EXIT_CONNECTION_LOST, Lifeline
from schemas import Subjects

from . import batch
from .core import Core, OrchConfig
from .core.tenancy import Tenancy
from .eventlog import EventLog
from .service import OrchestratorService

log = logging.getLogger("llorch.orch")


async def serve(
    nats_url: str,
    cfg: OrchConfig,
    subjects: Subjects,
    batch_cfg: batch.BatchConfig | None = None,
    credentials: Credentials | None = None,
    metrics_port: int | None = None,
    operators: Iterable[str] = (),
    record_events: Path | None = None,
) -> int:
    """Serve until SIGINT/SIGTERM (0), or until NATS closes the connection for good
    (EXIT_CONNECTION_LOST: nothing can be served or cleaned up on it any more).
    `operators` (public keys or user names) see and act on every job (`Tenancy.of`);
    `record_events`: a file for every event the core is fed, with its outputs (`eventlog`)."""
    observe.setup("llorch-orchestrator", metrics_port)
    credentials = credentials or Credentials()
    log.info("connecting to %s as %s", nats_url, credentials.describe())
    lifeline = Lifeline("orchestrator", log)

    service: OrchestratorService | None = None

    async def reconnected() -> None:
        if service is not None:  # a reconnect before it exists has nothing to tell it
            await service.reconnected()

    nc = await nats.connect(
        nats_url,
        name="llorch-orchestrator",
        reconnected_cb=reconnected,
        **lifeline.options(),
        **credentials.connect_options(),
    )
    lifeline.watch(nc)
    tenancy = Tenancy.of(credentials.inbox, operators)
    log.info(
        "jobs kept apart per identity: %s (%d operators)",
        "yes" if tenancy.on else "no",
        len(tenancy.operators),
    )
    incarnation = secrets.token_hex(3)  # worker ids of this run: never a predecessor's
    record = EventLog(record_events, cfg, incarnation) if record_events else None
    core = Core(cfg, incarnation)
    service = OrchestratorService(nc, core, subjects, tenancy=tenancy, record=record)
    await service.start()
    runner = await batch.start(service, batch_cfg or batch.BatchConfig())
    log.info("orchestrator serving on %s (prefix %s)", nats_url, subjects.prefix)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    if await lifeline.until(stop):
        return EXIT_CONNECTION_LOST
    if runner is not None:
        await runner.stop()
    await service.stop()
    lifeline.leaving()
    await nc.drain()
    if record is not None:
        record.close()
    return 0
