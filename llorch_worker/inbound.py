"""Decoding and checking what the orchestrator sends a worker. Pure; raises only ProtocolError."""

from __future__ import annotations

import re

from schemas import CancelRequest, ErrorCode, Execute, ProtocolError, check_id, decoder

_decode_execute = decoder(Execute)
_decode_cancel = decoder(CancelRequest)
# A subject to publish on: tokens separated by dots, no wildcards, no whitespace.
_SUBJECT = re.compile(r"^[^.*>\s]+(\.[^.*>\s]+)*$")
_MAX_SEED = 2**32 - 1


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, message)


def parse_execute(data: bytes, model: str) -> Execute:
    job = _decode_execute(data)
    check_id(job.job_id, "job id")
    _require(job.model == model, f"this worker serves model {model!r}, not {job.model[:80]!r}")
    _require(bool(_SUBJECT.match(job.stream)), "stream must be a subject without wildcards")
    _require(job.max_tokens >= 1, "max_tokens must be >= 1")
    _require(0.0 <= job.temperature <= 5.0, "temperature must be in [0, 5]")
    _require(0.0 < job.top_p <= 1.0, "top_p must be in (0, 1]")
    _require(job.top_k >= 0, "top_k must be >= 0")
    _require(0 <= job.seed <= _MAX_SEED, "seed must be in [0, 2**32-1]")
    _require(job.seq >= 0, "seq must be >= 0")
    return job


def parse_cancel(data: bytes) -> CancelRequest:
    req = _decode_cancel(data)
    check_id(req.job_id, "job id")
    return req
