"""Process factory for workers: command line, environment, log file, start.

Workers run in their own session, so a Ctrl-C meant for the pool's terminal reaches only the
pool, which then stops them (SIGINT: the running job ends with a retriable error); on Linux
they also get SIGHUP (abandon: the running job stops without a terminal event, for the
orchestrator to retry elsewhere, and the worker exits) if the pool itself dies. The worker asks
the kernel for that signal itself (llorch_common.orphan); the pool only names itself in the
worker's environment, so a worker whose pool died before it asked signals itself. (No
`preexec_fn`: running Python between fork and exec is unsafe in a process with threads.)
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from llorch_common import orphan
from llorch_common.connect import without_credentials
from llorch_common.observe import METRICS_PORT_ENV
from schemas.control import DeviceKind


@dataclass(frozen=True, slots=True)
class PoolSettings:
    """What every worker of this pool shares."""

    nats_url: str
    pool_id: str
    prefix: str
    log_dir: Path
    threads: int | None = None  # --threads for CPU workers; None = the worker's default
    credentials_env: Mapping[str, str] = field(default_factory=dict)  # LLORCH_NATS_* for workers


@dataclass(frozen=True, slots=True)
class Launch:
    """One worker to start."""

    worker_id: str
    model: str
    model_path: str
    n_ctx: int
    device: int
    device_kind: DeviceKind
    slots: int = 1  # jobs it decodes together, each with n_ctx of its own
    trace_env: Mapping[str, str] = field(default_factory=dict)  # TRACEPARENT of the spawn


def worker_argv(settings: PoolSettings, launch: Launch, python: str = sys.executable) -> list[str]:
    argv = [
        python,
        "-m",
        "llorch_worker",
        "--nats-url",
        settings.nats_url,
        "--worker-id",
        launch.worker_id,
        "--pool-id",
        settings.pool_id,
        "--model",
        launch.model,
        "--model-path",
        launch.model_path,
        "--n-ctx",
        str(launch.n_ctx),
        "--device",
        str(launch.device),
        "--device-kind",
        launch.device_kind,
        "--prefix",
        settings.prefix,
        "--slots",
        str(launch.slots),
    ]
    if settings.threads is not None:
        argv += ["--threads", str(settings.threads)]
    return argv


def worker_env(
    base: Mapping[str, str], kind: DeviceKind, index: int, credentials: Mapping[str, str] = {}
) -> dict[str, str]:
    """A GPU worker sees only its NVML index; a CPU worker sees no GPU at all. It gets the
    worker identity's credentials (env, never argv) and never inherits the pool's own."""
    env = without_credentials(base)
    env.update(credentials)
    for name in (METRICS_PORT_ENV, "TRACEPARENT", "TRACESTATE"):  # the pool's, not the worker's
        env.pop(name, None)
    env["CUDA_VISIBLE_DEVICES"] = str(index) if kind == "gpu" else ""
    return env


def log_path(settings: PoolSettings, worker_id: str) -> Path:
    """Beside `llorch up`'s own logs; the prefix keeps a worker id from naming another log."""
    return settings.log_dir / f"worker-{worker_id}.log"


async def start_worker(settings: PoolSettings, launch: Launch) -> asyncio.subprocess.Process:
    """Raises OSError when the process cannot be created."""
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    env = worker_env(os.environ, launch.device_kind, launch.device, settings.credentials_env)
    env.update(launch.trace_env)
    env.update(orphan.parent_env())  # the worker abandons its job when this pool dies
    with log_path(settings, launch.worker_id).open("ab") as log:
        return await asyncio.create_subprocess_exec(
            *worker_argv(settings, launch),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
