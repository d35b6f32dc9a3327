"""Replies of `api.state` and `api.models`: the orchestrator's view, as data."""

from schemas.api import JobInfo
from schemas.base import Message
from schemas.control import Device, Leadership, ModelInfo, WorkerInfo


class PoolView(Message, tag="pool"):
    pool_id: str
    alive: bool
    last_seen_ms_ago: float
    devices: list[Device]
    workers: list[WorkerInfo]


class ClusterState(Message, tag="state"):
    pools: list[PoolView]
    queue: list[JobInfo]  # waiting jobs, in start order
    running: list[JobInfo]
    recent: list[JobInfo] = []  # jobs that ended lately, newest first (at most RECENT_JOBS)
    leader: Leadership | None = None  # the orchestrator that answered, and since when it leads


class CatalogEntry(Message, tag="catalog_entry"):
    model: ModelInfo
    pools: list[str]  # pools that hold the file
    est_bytes: int  # memory the orchestrator budgets for one worker (learned once measured)
    measured: bool  # est_bytes comes from a worker's report, not from the GGUF estimate
    # Context a request may use (prompt + max_tokens), as the orchestrator enforces it:
    # min(its configured n_ctx for the model, n_ctx_train). 0: an orchestrator older than this.
    n_ctx: int = 0


class ModelsReply(Message, tag="models"):
    models: list[CatalogEntry]
