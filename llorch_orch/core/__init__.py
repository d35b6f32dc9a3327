"""The orchestrator's pure core: cluster view, admission queue, placement, eviction, recovery."""

from .brain import Core
from .commands import AbandonOnWorker, CancelOnWorker, Command, Emit, SendExecute, Spawn, Stop
from .config import Limits, ModelConfig, OrchConfig

__all__ = [
    "AbandonOnWorker",
    "CancelOnWorker",
    "Command",
    "Core",
    "Emit",
    "Limits",
    "ModelConfig",
    "OrchConfig",
    "SendExecute",
    "Spawn",
    "Stop",
]
