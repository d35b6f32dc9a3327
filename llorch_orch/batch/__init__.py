"""Queue-backed batch jobs on JetStream (docs/batch.md)."""

from __future__ import annotations

import logging

from ..service import OrchestratorService
from .config import BatchConfig, BatchConfigError, load
from .runner import BatchRunner

log = logging.getLogger("llorch.batch")

__all__ = ["BatchConfig", "BatchConfigError", "BatchRunner", "load", "start"]


async def start(service: OrchestratorService, cfg: BatchConfig) -> BatchRunner | None:
    """The runner, started; None when disabled or when the server has no JetStream (the
    orchestrator then serves interactive jobs only, and says why)."""
    if not cfg.enabled:
        return None
    runner = BatchRunner(service, cfg)
    try:
        await runner.start()
    except Exception as exc:
        log.error("batch jobs disabled: JetStream setup failed: %r", exc)
        await runner.stop()
        return None
    log.info("batch runner pulling from JetStream")
    return runner
