"""`python -m llorch_pool serve | models add | models list` (also reached as `llorch pool …`)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

import nats

from llorch_common import connect, observe
from llorch_common.lifeline import EXIT_CONNECTION_LOST, Lifeline
from llorch_common.local import (
    DEFAULT_NATS_URL,
    NATS_URL_ENV,
    default_data_dir,
    default_pool_id,
    nats_url,
    positive_float,
    positive_int,
    servers,
)
from llorch_pool import announce, catalog, model_files
from llorch_pool.inventory import Inventory
from llorch_pool.paths import model_dirs
from llorch_pool.service import PoolConfig, PoolService
from schemas import (
    DEFAULT_PREFIX,
    ErrorCode,
    ProtocolError,
    Subjects,
    check_id,
)

CONNECT_WAIT_S = 30.0  # give up starting when NATS is unreachable this long

_PROGRESS_MIN_BYTES = 256 << 20  # smaller copies take well under a second
log = logging.getLogger("llorch_pool")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llorch pool", description="llorch pool manager")
    sub = parser.add_subparsers(dest="command", required=True)
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", type=Path, default=None, help="default: $LLORCH_DATA_DIR")

    serve = sub.add_parser("serve", parents=[data_dir], help="run the pool manager")
    serve.add_argument(
        "--nats-url",
        type=nats_url,
        default=DEFAULT_NATS_URL,
        metavar="URL[,URL...]",
        help="NATS server(s), comma-separated; its workers get the same list",
    )
    serve.add_argument("--pool-id", default=None, help="default: the hostname, sanitised")
    serve.add_argument("--prefix", default=DEFAULT_PREFIX)
    serve.add_argument("--heartbeat-interval", type=positive_float, default=2.0)
    serve.add_argument("--cpu", action="store_true", help="report the CPU device even with GPUs")
    serve.add_argument("--cpu-memory-bytes", type=positive_int, default=None)
    serve.add_argument(
        "--device-memory-limit",
        type=positive_int,
        default=None,
        metavar="BYTES",
        help="report each GPU as at most BYTES big; free = min(NVML free, BYTES - what this "
        "pool's workers hold there) (to share a card, or to test eviction on a big one)",
    )
    serve.add_argument("--worker-threads", type=positive_int, default=None)
    serve.add_argument(
        "--metrics-port",
        type=int,
        default=observe.metrics_port_default(),
        help=f"serve Prometheus metrics on 127.0.0.1:PORT (default ${observe.METRICS_PORT_ENV})",
    )
    serve.add_argument(
        "--allow-model-dir",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="also load model files from DIR (besides <data-dir>/models and the bundled one)",
    )
    connect.add_arguments(serve)  # the pool's own identity
    connect.add_arguments(serve, "worker")  # the identity its workers get (via env)

    models = sub.add_parser("models", help="the model catalog of this host")
    models_sub = models.add_subparsers(dest="models_command", required=True)
    add = models_sub.add_parser(
        "add",
        parents=[data_dir],
        help="link or copy a GGUF into <data-dir>/models (or keep it in place), hash it, and "
        "wait until a running stack serves it",
    )
    add.add_argument("name")
    add.add_argument("path", type=Path)
    add.add_argument(
        "--in-place",
        action="store_true",
        help="register the file where it lies (its dir must be allowed: --allow-model-dir)",
    )
    add.add_argument(
        "--nats-url",
        type=nats_url,
        default=os.environ.get(NATS_URL_ENV) or None,
        metavar="URL[,URL...]",
        help="the stack to tell (default $LLORCH_NATS_URL, else the `llorch up` of --data-dir)",
    )
    add.add_argument("--prefix", default=DEFAULT_PREFIX)
    connect.add_arguments(add)  # default: the admin seed `llorch up` keeps in the data dir
    models_sub.add_parser("list", parents=[data_dir], help="list the catalog")
    return parser


def _format_row(name: str, record: catalog.ModelRecord, present: bool) -> str:
    state = "" if present else "  (file missing)"
    return (
        f"{name:<24} {record.size_bytes:>13} {record.n_ctx_train:>7} {record.n_layers:>6} "
        f"{record.kv_bytes_per_token:>8} {record.sha256[:16]}  {record.path}{state}"
    )


def models_list(data_dir: Path) -> int:
    catalog.ensure_default(data_dir)
    print(f"{'NAME':<24} {'SIZE_BYTES':>13} {'N_CTX':>7} {'LAYERS':>6} {'KV/TOK':>8} SHA256")
    for name, record in sorted(catalog.load(data_dir).items()):
        print(_format_row(name, record, Path(record.path).is_file()))
    return 0


def models_add(data_dir: Path, args: argparse.Namespace) -> int:
    size = args.path.stat().st_size if args.path.is_file() else 0
    added = model_files.add(data_dir, args.name, args.path, args.in_place, _copy_progress(size))
    print(_placed(added))
    print(_format_row(args.name, added.record, present=True))
    for note in _notes(args.name, added):
        print(f"note: {note}", file=sys.stderr)
    given = connect.Credentials.from_args(args, os.environ)
    stack = announce.endpoint(data_dir, args.nats_url, given)
    if stack is None:
        print(
            f"no `llorch up` runs on {data_dir}: {args.name} will be served when it starts, "
            "or at the next heartbeat of a pool serving this data dir (--nats-url URL waits "
            "for that)"
        )
        return 0
    url, creds = stack
    sha256 = added.record.sha256
    outcome = asyncio.run(announce.announce(url, Subjects(args.prefix), creds, args.name, sha256))
    return _report_served(args.name, outcome)


def _placed(added: model_files.Added) -> str:
    """Exactly what happened to the user's file."""
    target = added.record.path
    match added.how:
        case "linked":
            return f"linked {added.source} as {target} (a hard link: the same file, no copy)"
        case "copied":
            return f"copied {added.source} to {target} ({_gib(added.record.size_bytes)})"
        case "in place":
            return f"registered {target} in place"


def _notes(name: str, added: model_files.Added) -> list[str]:
    """How to keep a file where it lies: the one thing `models add` cannot do alone."""
    allow = f"`llorch up --allow-model-dir {added.source.parent}`"
    if added.how == "copied":
        return [
            f"to use {added.source} where it lies instead: `llorch models add {name} "
            f"{added.source} --in-place`, start the stack with {allow}, delete the copy"
        ]
    if not added.allowed:
        return [f"a pool loads {added.source} only from an allowed dir: start it with {allow}"]
    return []


def _report_served(name: str, outcome: announce.Outcome) -> int:
    match outcome:
        case announce.Served(pools=pools):
            print(f"served: the orchestrator lists {name} on pool {', '.join(pools)}")
            return 0
        case announce.NoStack(reason=reason):
            print(f"not served yet: {reason}; {name} will be served when `llorch up` starts")
            return 0
        case announce.NotListed(reason=reason):
            print(f"error: {ErrorCode.MODEL_NOT_FOUND}: {reason}", file=sys.stderr)
            return 1


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def progress_line(done: int, total: int) -> str:
    return f"\rcopying: {_gib(done)} of {_gib(total)} ({done * 100 // max(total, 1)}%)"


def _copy_progress(total: int) -> model_files.Progress:
    """Progress on a terminal for a big copy (a hard link is instant and calls nothing)."""
    if total < _PROGRESS_MIN_BYTES or not sys.stderr.isatty():
        return lambda _done: None

    def show(done: int) -> None:
        end = "\n" if done >= total else ""
        print(progress_line(done, total), end=end, file=sys.stderr, flush=True)

    return show


async def _log_nats_error(exc: Exception) -> None:
    """One line per connection error instead of nats-py's traceback (it retries every 2 s)."""
    log.warning("nats: %r", exc)


async def serve(
    config: PoolConfig,
    force_cpu: bool,
    cpu_memory_bytes: int | None,
    credentials: connect.Credentials,
    device_memory_limit: int | None = None,
) -> int:
    await asyncio.to_thread(catalog.ensure_default, config.data_dir)
    inventory = Inventory.probe(config.pool_id, force_cpu, cpu_memory_bytes, device_memory_limit)
    log.info(
        "connecting as %s; workers get %s",
        credentials.describe(),
        config.worker_credentials.describe(),
    )
    lifeline = Lifeline(f"pool {config.pool_id}", log)
    nc = await asyncio.wait_for(
        nats.connect(
            servers(config.nats_url),
            name=f"llorch-pool-{config.pool_id}",
            error_cb=_log_nats_error,
            **lifeline.options(),
            **credentials.connect_options(),
        ),
        CONNECT_WAIT_S,
    )
    lifeline.watch(nc)
    service = PoolService(config, nc, inventory)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    beats = asyncio.create_task(service.run_heartbeats())
    log.info("pool %s serving on %s (%s)", config.pool_id, config.nats_url, inventory.kind)
    if await lifeline.until(stop):
        # Nothing to report on: the workers learn of our death as when we are killed.
        inventory.close()
        return EXIT_CONNECTION_LOST
    log.info("pool %s shutting down", config.pool_id)
    beats.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await beats
    await service.shutdown()
    lifeline.leaving()
    await nc.drain()
    inventory.close()
    return 0


def _run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir if args.data_dir is not None else default_data_dir()
    if args.command == "models":
        if args.models_command == "add":
            return models_add(data_dir, args)
        return models_list(data_dir)
    pool_id = check_id(args.pool_id, "pool id") if args.pool_id else default_pool_id()
    credentials = connect.Credentials.from_args(args, os.environ)
    workers = connect.Credentials.from_args(args, os.environ, "worker")
    if not workers.empty:  # workers share the pool's TLS settings, never its identity
        tls = {k: getattr(credentials, k) for k in ("tls_ca", "tls_cert", "tls_key")}
        workers = dataclasses.replace(workers, **tls)
    config = PoolConfig(
        nats_url=args.nats_url,
        pool_id=pool_id,
        data_dir=data_dir,
        prefix=args.prefix,
        heartbeat_interval=args.heartbeat_interval,
        worker_threads=args.worker_threads,
        worker_credentials=workers,
        model_dirs=model_dirs(data_dir, args.allow_model_dir),
    )
    return asyncio.run(
        serve(config, args.cpu, args.cpu_memory_bytes, credentials, args.device_memory_limit)
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        observe.setup("llorch-pool", args.metrics_port)
    else:
        observe.setup_logging("llorch-pool")
    try:
        return _run(args)
    except ProtocolError as exc:
        print(f"error: {exc.code}: {exc.message}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"error: NATS unreachable within {CONNECT_WAIT_S:.0f}s", file=sys.stderr)
        return 1
    except OSError as exc:  # e.g. no space left for a copy: the errno says it all
        print(f"error: {exc}", file=sys.stderr)
        return 1
