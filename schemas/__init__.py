"""The wire contract: message Structs, subject builders, error codes, ids, the codec. Nothing else.

It imports no I/O library and none of the llorch packages (`tests/test_boundaries.py`); the
runtime every process shares (connections, tracing, telemetry, memory readings) is
`llorch_common`."""

from schemas.api import (
    CancelReply,
    CancelRequest,
    ChatMessage,
    End,
    Error,
    Event,
    GenerateRequest,
    JobGetRequest,
    JobInfo,
    ModelsRequest,
    Priority,
    Queued,
    Started,
    StateRequest,
    Token,
)
from schemas.batch import (
    BatchCancelReply,
    BatchCancelRequest,
    BatchEvent,
    BatchJob,
    BatchResult,
    BatchStatus,
    BatchStatusRequest,
)
from schemas.codec import MAX_MESSAGE_BYTES, decoder, encode
from schemas.codes import ErrorCode, ProtocolError
from schemas.control import (
    Ack,
    Device,
    Execute,
    Heartbeat,
    JobStatus,
    ModelInfo,
    SnapshotRequest,
    SpawnRequest,
    StopRequest,
    WorkerCancel,
    WorkerFailed,
    WorkerInfo,
    WorkerReady,
)
from schemas.ids import check_id, is_valid_id, new_id
from schemas.state import CatalogEntry, ClusterState, ModelsReply, PoolView
from schemas.subjects import DEFAULT_PREFIX, Subjects

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_MESSAGE_BYTES",
    "Ack",
    "BatchCancelReply",
    "BatchCancelRequest",
    "BatchEvent",
    "BatchJob",
    "BatchResult",
    "BatchStatus",
    "BatchStatusRequest",
    "CancelReply",
    "CancelRequest",
    "CatalogEntry",
    "ChatMessage",
    "ClusterState",
    "Device",
    "End",
    "Error",
    "ErrorCode",
    "Event",
    "Execute",
    "GenerateRequest",
    "Heartbeat",
    "JobGetRequest",
    "JobInfo",
    "JobStatus",
    "ModelInfo",
    "ModelsReply",
    "ModelsRequest",
    "PoolView",
    "Priority",
    "ProtocolError",
    "Queued",
    "SnapshotRequest",
    "SpawnRequest",
    "Started",
    "StateRequest",
    "StopRequest",
    "Subjects",
    "Token",
    "WorkerCancel",
    "WorkerFailed",
    "WorkerInfo",
    "WorkerReady",
    "check_id",
    "decoder",
    "encode",
    "is_valid_id",
    "new_id",
]
