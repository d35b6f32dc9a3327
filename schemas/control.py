"""Control-plane messages between orchestrator, pool managers and workers."""

from typing import Annotated, Literal

from msgspec import Meta

from schemas.api import (
    ChatMessages,
    MaxTokens,
    ModelName,
    Seed,
    StopList,
    Temperature,
    TopK,
    TopP,
    check_prompt_or_messages,
)
from schemas.base import Message
from schemas.codes import ErrorCode
from schemas.ids import Id
from schemas.subjects import PublishSubject

DeviceKind = Literal["gpu", "cpu"]
WorkerState = Literal["starting", "ready", "busy", "draining", "failed", "exited"]


class Device(Message, tag="device"):
    index: int  # NVML index (CUDA_VISIBLE_DEVICES value for workers); 0 for the CPU device
    uuid: str
    name: str
    kind: DeviceKind
    total_bytes: int
    free_bytes: int
    used_bytes: int


class WorkerInfo(Message, tag="worker"):
    worker_id: str
    model: str
    device: int
    pid: int | None
    state: WorkerState
    memory_bytes: int | None = None  # measured after load; None while starting
    exit_code: int | None = None  # once reaped
    message: str = ""  # why it failed, when it did
    slots: int = 1  # sequences it decodes at once (jobs it may run together)
    slots_busy: int = 0  # of those, running a job now (its latest WorkerLoad)


class ModelInfo(Message, tag="model"):
    name: str
    sha256: str
    size_bytes: int
    n_ctx_train: int  # context length the model was trained for (GGUF metadata)
    n_layers: int
    kv_bytes_per_token: int  # f16 K+V bytes per context position (GGUF metadata)
    has_chat_template: bool = False  # the GGUF carries `tokenizer.chat_template`: chat works


class Heartbeat(Message, tag="heartbeat"):
    pool_id: str
    ts: float  # pool's wall clock, unix seconds
    seq: int  # +1 per heartbeat of this pool process
    interval_s: float
    devices: list[Device]
    workers: list[WorkerInfo]
    models: list[ModelInfo]


class Leadership(Message, tag="leader"):
    """Which orchestrator leads (`llorch.v1.leader` when it takes the lead; `api.state`)."""

    epoch: int  # grows with every new lead; pools and workers refuse commands of older ones
    orchestrator: str  # the leader's name (`llorch orch --name`)
    since: float  # unix seconds, the leader's clock, when it took the lead


class SnapshotRequest(Message, tag="snapshot_request"):
    pass


MAX_SLOTS = 256  # sequences one worker may decode at once


class SpawnRequest(Message, tag="spawn"):
    worker_id: str
    model: str
    device: int  # device index from the pool's inventory
    n_ctx: int  # context to allocate per slot (the worker's context holds slots x n_ctx)
    slots: Annotated[int, Meta(ge=1, le=MAX_SLOTS)] = 1  # jobs it runs at once


class StopRequest(Message, tag="stop"):
    worker_id: str
    drain: bool = True  # finish the running job first; False = kill now


class Ack(Message, tag="ack"):
    detail: str = ""


class WorkerReady(Message, tag="ready"):
    worker_id: str
    pool_id: str
    model: str
    device: int
    pid: int
    memory_bytes: int  # measured footprint of the process on its device
    n_ctx: int
    layers_offloaded: int
    layers_total: int
    load_ms: float
    slots: int = 1  # jobs it runs at once (continuous batching in one context)


class WorkerLoad(Message, tag="worker_load"):
    """Worker -> `worker.<W>.ready` whenever the number of its busy slots changes, and every 5 s
    besides (a lost one is mended), so its pool reports it (`WorkerInfo.slots_busy`) and an
    orchestrator that adopts it knows."""

    worker_id: str
    pool_id: str
    slots_busy: int


class WorkerFailed(Message, tag="worker_failed"):
    worker_id: str
    pool_id: str
    code: ErrorCode
    message: str


class Execute(Message, tag="execute", kw_only=True):
    """Typed like GenerateRequest: the worker's decoder checks the same bounds."""

    job_id: Id
    model: ModelName
    prompt: str | None = None  # raw completion, or:
    messages: ChatMessages | None = None  # chat, rendered with the model's template
    max_tokens: MaxTokens
    temperature: Temperature
    top_p: TopP
    top_k: TopK
    seed: Seed
    stream: PublishSubject  # subject the events go to (the client's inbox)
    stop: StopList = []
    seq: Annotated[int, Meta(ge=0)] = 0  # seq of the first event this worker sends
    resume_after: int = -1  # retry: suppress events with seq <= this (the client has them)
    # retry: the `hash` of the last status at `resume_after`; the worker checks its regenerated
    # text against it and ends the job with WORKER_LOST instead of splicing different text
    resume_hash: str | None = None

    def __post_init__(self) -> None:
        check_prompt_or_messages(self.prompt, self.messages)


class JobStatus(Message, tag="job_status"):
    job_id: str
    worker_id: str
    # abandoned: the worker stopped without a terminal event on the stream (its pool died, or
    # the orchestrator asked it to); `seq` is the last event it published and the orchestrator
    # owns the job's retry (docs/worker.md, docs/scheduling.md)
    state: Literal["started", "progress", "finished", "failed", "abandoned"]
    seq: int  # last seq published to the stream
    tokens_in: int = 0
    tokens_out: int = 0
    code: ErrorCode | None = None  # when failed or abandoned
    ttft_ms: float | None = None  # on finished/failed: job start on the worker to first token
    # running hash of the text published on the stream up to `seq` (what a retry must match)
    hash: str | None = None


class WorkerCancel(Message, tag="worker_cancel"):
    """Orchestrator -> `worker.<W>.cancel` (a bare `{"job_id": J}` cancels too). `abandon`:
    stop the job at the next token and publish nothing more on its stream (no terminal event:
    the orchestrator retries it elsewhere); the reply comes once the job has stopped and is its
    final JobStatus."""

    job_id: Id
    abandon: bool = False
