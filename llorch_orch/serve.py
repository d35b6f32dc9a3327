"""`llorch orch`: the orchestrator process.

Several may run against one bus. Each waits for the lease (`lease.py`); the one holding it
leads, and only the leader serves the API, the pools and the batch consumer. A lead is a term:
a fresh core and service, which adopt what the pools report (as after a restart). When a lead
ends without our asking (the lease passed on, or a pool or worker refused a command as stale)
the term is torn down without a word to any client, and the process stands by again.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import nats
from nats.aio.client import Client

from llorch_common import observe
from llorch_common.aio import first_set
from llorch_common.connect import Credentials
from llorch_common.lifeline import EXIT_CONNECTION_LOST, Lifeline
from llorch_common.local import servers
from schemas import Leadership, Subjects

from . import batch
from .core import Core, OrchConfig
from .core.tenancy import Tenancy
from .eventlog import EventLog
from .lease import DEFAULT_TTL_S, RENEWALS_PER_TTL, Lease
from .service import OrchestratorService

log = logging.getLogger("llorch.orch")


class Ended(Enum):
    STOPPED = "stopped"  # SIGINT/SIGTERM: the lease is released, queued clients told
    LOST = "lost"  # NATS closed the connection for good
    DEPOSED = "deposed"  # the lead ended without our asking: stand by again


@dataclass(frozen=True, slots=True)
class Term:
    """What every lead of this process serves with, and the signals that end one."""

    nc: Client
    cfg: OrchConfig
    subjects: Subjects
    batch_cfg: batch.BatchConfig
    tenancy: Tenancy
    record_events: Path | None
    stop: asyncio.Event
    lifeline: Lifeline


async def serve(
    nats_url: str,
    cfg: OrchConfig,
    subjects: Subjects,
    batch_cfg: batch.BatchConfig | None = None,
    credentials: Credentials | None = None,
    metrics_port: int | None = None,
    operators: Iterable[str] = (),
    record_events: Path | None = None,
    name: str = "",
    lease_ttl_s: float = DEFAULT_TTL_S,
) -> int:
    """Serve until SIGINT/SIGTERM (0), or until NATS closes the connection for good
    (EXIT_CONNECTION_LOST: nothing can be served or cleaned up on it any more).
    `operators` (public keys or user names) see and act on every job (`Tenancy.of`);
    `record_events`: a file for every event the core is fed, with its outputs (`eventlog`;
    a later lead of the same process writes `FILE.<epoch>`); `name`: this orchestrator's,
    as `llorch state` shows the leader (default: a random one); `lease_ttl_s`: how long a
    lead outlives its leader's last renewal (the bucket's TTL wins if it exists)."""
    observe.setup("llorch-orchestrator", metrics_port)
    credentials = credentials or Credentials()
    name = name or f"orch-{secrets.token_hex(3)}"
    log.info("connecting to %s as %s (%s)", nats_url, credentials.describe(), name)
    lifeline = Lifeline("orchestrator", log)
    serving: list[OrchestratorService] = []  # the term's service while we lead

    async def reconnected() -> None:
        for service in serving:
            await service.reconnected()

    nc = await nats.connect(
        servers(nats_url),  # of a cluster: the connection moves on when its server goes
        name=f"llorch-orchestrator-{name}",
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
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    term = Term(
        nc, cfg, subjects, batch_cfg or batch.BatchConfig(), tenancy, record_events, stop, lifeline
    )
    # the lease's requests time out within a renewal period: a lapse is noticed in time
    js = nc.jetstream(timeout=lease_ttl_s / RENEWALS_PER_TTL)
    lease = Lease(js, subjects.prefix, name, lease_ttl_s, term.batch_cfg.replicas)
    ended, leads = Ended.DEPOSED, 0
    while ended is Ended.DEPOSED:
        epoch = await _stand_by(lease, term)
        if epoch is None:
            ended = Ended.LOST if lifeline.lost.is_set() else Ended.STOPPED
            continue
        incarnation = secrets.token_hex(3)  # ids this lead makes up: never a predecessor's
        record = _record(term, epoch, incarnation, later=leads > 0)
        leads += 1
        leadership = Leadership(epoch, name, time.time())
        core = Core(cfg, incarnation)
        ended = await _lead(term, lease, leadership, core, record, serving)
    if ended is Ended.LOST:
        return EXIT_CONNECTION_LOST
    lifeline.leaving()
    await nc.drain()
    return 0


async def _stand_by(lease: Lease, term: Term) -> int | None:
    """The epoch of our lead once we hold the lease; None if we stop (or lose NATS) first."""
    give_up = asyncio.Event()
    ends = asyncio.ensure_future(first_set(term.stop, term.lifeline.lost))
    ends.add_done_callback(lambda _: give_up.set())
    try:
        return await lease.acquire(give_up)
    finally:
        ends.cancel()


async def _lead(
    term: Term,
    lease: Lease,
    leadership: Leadership,
    core: Core,
    record: EventLog | None,
    serving: list[OrchestratorService],
) -> Ended:
    epoch = leadership.epoch
    log.info("%s leads (epoch %d)", leadership.orchestrator, epoch)
    service = OrchestratorService(
        term.nc,
        core,
        term.subjects,
        tenancy=term.tenancy,
        record=record,
        leadership=leadership,
    )
    lease_lost = asyncio.Event()
    why: list[str] = []

    async def hold() -> None:
        why.append(await lease.hold())
        lease_lost.set()

    holding = asyncio.ensure_future(hold())
    runner = None
    try:
        await service.start()
        serving.append(service)
        runner = await batch.start(service, term.batch_cfg)
        log.info("orchestrator serving (prefix %s)", term.subjects.prefix)
        ended = await first_set(term.stop, term.lifeline.lost, lease_lost, service.deposed)
    finally:
        holding.cancel()
        serving.clear()
    if ended is term.lifeline.lost:
        return Ended.LOST
    if runner is not None:
        await runner.stop()
    if ended is term.stop:
        await service.stop()
        await lease.release()
        _close(record)
        return Ended.STOPPED
    reason = why[0] if why else "a pool or worker refused a command: a newer leader leads"
    log.warning("stepping down (epoch %d): %s", epoch, reason)
    await service.resign()
    _close(record)
    return Ended.DEPOSED


def _record(term: Term, epoch: int, incarnation: str, later: bool) -> EventLog | None:
    """The lead's event record: the file asked for, `FILE.<epoch>` for a later lead."""
    if term.record_events is None:
        return None
    path = term.record_events
    if later:
        path = path.with_name(f"{path.name}.{epoch}")
    return EventLog(path, term.cfg, incarnation)


def _close(record: EventLog | None) -> None:
    if record is not None:
        record.close()
