"""`python -m llorch_worker ...`: the process the pool manager spawns.

`llama_cpp` is imported before anything imports `nats`: with the other order a CUDA model
load segfaulted (seen on an H200 build). Import sorting keeps this order (third-party
`llama_cpp` before first-party `llorch_worker.service`, which imports `nats`);
tests/worker/test_import_order.py holds it.
"""

import asyncio
from collections.abc import Coroutine

import llama_cpp  # noqa: F401  (see the docstring: before nats)

from llorch_common import observe
from llorch_worker.cli import parse_args
from llorch_worker.service import Worker


def main() -> int:
    cfg = parse_args()
    ids = {"llorch.worker.id": cfg.worker_id, "llorch.pool.id": cfg.pool_id}
    observe.setup("llorch-worker", None, **ids)  # metrics: OTLP only (no port: workers come and go)
    return _run(Worker(cfg).run())


def _run(main: Coroutine[None, None, int]) -> int:
    """uvloop where installed: every hop of the token path passes through this loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


if __name__ == "__main__":
    raise SystemExit(main())
