"""The orchestrator's pure core: cluster view, admission queue, placement, eviction, recovery."""

from .brain import Core
from .commands import AbandonOnWorker, CancelOnWorker, Command, Emit, SendExecute, Spawn, Stop
from .config import Limits, ModelConfig, OrchConfig
from .outputs import Answered, JobEnded, Notice, Output, Pending

__all__ = [
    "AbandonOnWorker",
    "Answered",
    "CancelOnWorker",
    "Command",
    "Core",
    "Emit",
    "JobEnded",
    "Limits",
    "ModelConfig",
    "Notice",
    "OrchConfig",
    "Output",
    "Pending",
    "SendExecute",
    "Spawn",
    "Stop",
]
