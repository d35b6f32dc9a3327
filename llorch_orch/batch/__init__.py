"""Queue-backed batch jobs on JetStream (docs/batch.md)."""

from __future__ import annotations

import asyncio
import logging

from ..service import OrchestratorService
from . import store
from .config import SETUP_TRIES, BatchConfig, BatchConfigError, load
from .runner import BatchRunner

log = logging.getLogger("llorch.batch")

__all__ = ["BatchConfig", "BatchConfigError", "BatchRunner", "load", "start"]


async def start(service: OrchestratorService, cfg: BatchConfig) -> BatchRunner | None:
    """The runner, started; None when disabled or when the server has no JetStream (the
    orchestrator then serves interactive jobs only, and says why). A setup that fails for a
    while (no JetStream quorum yet) is tried again, a second apart, up to SETUP_TRIES times."""
    if not cfg.enabled:
        return None
    for attempt in range(1, SETUP_TRIES + 1):
        runner = BatchRunner(service, cfg)
        try:
            await runner.start()
        except Exception as exc:
            await runner.stop()
            if not store.transient(exc) or attempt == SETUP_TRIES:
                log.error("batch jobs disabled: JetStream setup failed: %r", exc)
                return None
            log.warning("JetStream setup failed (%r): trying again", exc)
            await asyncio.sleep(1.0)
            continue
        log.info("batch runner pulling from JetStream")
        return runner
    return None
