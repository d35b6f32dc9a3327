"""Orchestrator policy knobs, with the defaults documented in docs/scheduling.md."""

from dataclasses import dataclass, field
from typing import Literal

MiB = 1024 * 1024
# `slots = 0` (the default): a worker's slots chosen by its device, the most of these whose
# worker fits in the device's memory (the fewest if none does). A GPU batches almost for free
# (docs/performance.md, "Many streams at once": tokens/s still grew from 16 to 32 streams on
# an H200). A CPU decodes a batch at the pace of its cores, but a job that finds every slot
# taken waits a whole generation: 8 slots gave 8 streams on 2 cores the same tokens/s as 4
# did, with a TTFT p99 of 3.9 s instead of 9.9 s.
CPU_SLOTS = (8, 4)
GPU_SLOTS = (32, 16, 8, 4)

QueuePolicy = Literal["reject", "drop-oldest-batch"]
PlacementStrategy = Literal["best-fit", "spread"]


@dataclass(frozen=True, slots=True)
class ModelConfig:
    # workers of this model at once, starting ones included; 0 = one per device of the live
    # pools that hold its file (a replica per device; its slots serve concurrent jobs)
    max_workers: int = 0
    keep_alive_s: float = 300.0  # idle worker stopped after this; 0 = never
    n_ctx: int = 2048  # context per slot (capped by the model's training context)
    slots: int = 0  # jobs one worker runs at once (continuous batching; KV = slots x n_ctx);
    # 0 = by device: the most of CPU_SLOTS or GPU_SLOTS that fits
    retired: bool = False  # refuse new jobs for it


@dataclass(frozen=True, slots=True)
class Limits:
    max_prompt_bytes: int = 256 * 1024  # UTF-8 bytes of one prompt
    max_tokens: int = 4096  # cap on a request's max_tokens
    max_stop: int = 8  # stop sequences per request
    max_stop_len: int = 64  # characters per stop sequence


@dataclass(frozen=True, slots=True)
class OrchConfig:
    queue_capacity: int = 1024  # jobs waiting, both priorities together
    queue_policy: QueuePolicy = "reject"
    placement: PlacementStrategy = "best-fit"
    spawn_timeout_s: float = 120.0  # spawn -> ready, else stopped and retried elsewhere once
    execute_ack_timeout_s: float = 5.0  # execute -> accepted, else the worker counts as lost
    stall_timeout_s: float = 30.0  # running job with no status for this long: worker lost
    pool_lost_after: int = 3  # missed heartbeat intervals before a pool is lost
    max_job_attempts: int = 2  # first run + one transparent retry
    max_heartbeat_skew_s: float = 300.0  # heartbeats with ts further off are dropped
    gpu_overhead_bytes: int = 768 * MiB  # CUDA context + compute buffers per worker process
    cpu_overhead_bytes: int = 160 * MiB  # interpreter + llama.cpp buffers per worker process
    queued_update_top: int = 32  # `queued` position updates go to jobs this close to the head
    queued_keepalive_s: float = 15.0  # re-send `queued` to a waiting job this often; 0 = never
    finished_memory: int = 4096  # finished jobs remembered for jobs.get / idempotent cancel
    default_model: ModelConfig = ModelConfig()
    models: dict[str, ModelConfig] = field(default_factory=dict)
    limits: Limits = Limits()

    def model(self, name: str) -> ModelConfig:
        return self.models.get(name, self.default_model)
