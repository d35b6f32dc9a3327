"""Decoding and checking what the orchestrator sends a worker. Pure; raises only ProtocolError.

Execute's fields are typed with the API's bounds (ids, the stream subject, sampling numbers),
so the decoder refuses a bad one with its code; only the model is this worker's own check."""

from __future__ import annotations

from schemas import ErrorCode, Execute, ProtocolError, WorkerCancel, decoder
from schemas.text import clip

_decode_execute = decoder(Execute)
_decode_cancel = decoder(WorkerCancel)


def parse_execute(data: bytes, model: str) -> Execute:
    job = _decode_execute(data)
    if job.model != model:
        message = f"this worker serves model {model!r}, not {clip(job.model)!r}"
        raise ProtocolError(ErrorCode.INVALID_PARAMS, message)
    return job


def parse_cancel(data: bytes) -> WorkerCancel:
    return _decode_cancel(data)
