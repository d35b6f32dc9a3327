"""Stable error codes: the only error vocabulary on the wire."""

from enum import StrEnum


class ErrorCode(StrEnum):
    INVALID_PARAMS = "INVALID_PARAMS"  # malformed message, wrong types, out-of-range values
    INVALID_ID = "INVALID_ID"  # an id outside [A-Za-z0-9_-]{1,64}
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # message or prompt over its limit
    CONTEXT_OVERFLOW = "CONTEXT_OVERFLOW"  # prompt tokens + max_tokens exceed the model's context
    QUEUE_FULL = "QUEUE_FULL"  # admission queue at capacity
    MODEL_NOT_FOUND = "MODEL_NOT_FOUND"  # model not in any catalog
    NO_CHAT_TEMPLATE = "NO_CHAT_TEMPLATE"  # chat `messages` sent to a model without a template
    NO_CAPACITY = "NO_CAPACITY"  # no device can ever hold the model (or the pin cannot be served)
    INSUFFICIENT_VRAM = "INSUFFICIENT_VRAM"  # a worker could not fit its model on its device
    MODEL_LOAD_FAILED = "MODEL_LOAD_FAILED"  # the engine failed to load the file
    UNTRUSTED_MODEL = "UNTRUSTED_MODEL"  # sha256 mismatch or path outside the allowed dirs
    WORKER_START_FAILED = "WORKER_START_FAILED"  # spawn did not reach ready
    WORKER_BUSY = "WORKER_BUSY"  # execute sent to a worker that runs a job
    WORKER_LOST = "WORKER_LOST"  # worker died or went silent mid-job
    POOL_LOST = "POOL_LOST"  # pool stopped heartbeating
    CANCELLED = "CANCELLED"  # job cancelled by its client or because its client left
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"  # job still queued at its deadline
    NOT_FOUND = "NOT_FOUND"  # unknown job, batch or worker id
    UNAVAILABLE = "UNAVAILABLE"  # nothing to serve yet: no pool reported, or no orchestrator
    STALE_LEADER = "STALE_LEADER"  # a command from an orchestrator whose lead has passed
    INTERNAL = "INTERNAL"  # a bug: reported, never crashes the service


class ProtocolError(Exception):
    """An error that becomes a coded reply on the wire."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
