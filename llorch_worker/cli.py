"""Command line of a worker process: the contract with the pool manager that spawns it."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from llorch_common.connect import Credentials, add_arguments
from llorch_common.local import nats_url, nonnegative_int, positive_float, positive_int
from schemas import DEFAULT_PREFIX, ProtocolError, check_id
from schemas.control import MAX_SLOTS


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    nats_url: str
    worker_id: str
    pool_id: str
    model: str  # catalog name, echoed in `started` and `ready`
    model_path: Path
    n_ctx: int
    device: int  # NVML index; on GPU the card is CUDA device 0 (CUDA_VISIBLE_DEVICES)
    device_kind: Literal["gpu", "cpu"]
    prefix: str = DEFAULT_PREFIX
    threads: int | None = None  # None = llama.cpp's default
    progress_interval: float = 0.25  # seconds between `progress` job statuses
    slots: int = 1  # jobs decoded together in the one context, each with n_ctx of its own
    credentials: Credentials = field(default_factory=Credentials)  # the pool passes them by env

    @property
    def gpu(self) -> bool:
        return self.device_kind == "gpu"


def _id(text: str) -> str:
    try:
        return check_id(text, "id")
    except ProtocolError as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _slots(text: str) -> int:
    n = positive_int(text)
    if n > MAX_SLOTS:
        raise argparse.ArgumentTypeError(f"at most {MAX_SLOTS}")
    return n


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m llorch_worker", description=__doc__)
    p.add_argument("--nats-url", required=True, type=nats_url)
    p.add_argument("--worker-id", required=True, type=_id)
    p.add_argument("--pool-id", required=True, type=_id)
    p.add_argument("--model", required=True)
    p.add_argument("--model-path", required=True, type=Path)
    p.add_argument("--n-ctx", required=True, type=positive_int)
    p.add_argument("--device", required=True, type=nonnegative_int)
    p.add_argument("--device-kind", required=True, choices=["gpu", "cpu"])
    p.add_argument("--prefix", default=DEFAULT_PREFIX)
    p.add_argument("--threads", type=positive_int, default=None)
    p.add_argument("--progress-interval", type=positive_float, default=0.25)
    p.add_argument("--slots", type=_slots, default=1)
    add_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> WorkerConfig:
    """Exits with status 2 and a usage message on bad arguments (argparse's convention)."""
    ns = _parser().parse_args(argv)
    return WorkerConfig(
        nats_url=ns.nats_url,
        worker_id=ns.worker_id,
        pool_id=ns.pool_id,
        model=ns.model,
        model_path=ns.model_path,
        n_ctx=ns.n_ctx,
        device=ns.device,
        device_kind=ns.device_kind,
        prefix=ns.prefix,
        threads=ns.threads,
        progress_interval=ns.progress_interval,
        slots=ns.slots,
        credentials=Credentials.from_args(ns, os.environ),
    )
