"""`python -m llorch_http` (also `llorch http`): the OpenAI-compatible HTTP edge and the
dashboard, a plain NATS client (docs/http.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
from pathlib import Path

import nats
import uvicorn

from llorch_common import observe
from llorch_common.connect import Credentials, add_arguments
from llorch_common.lifeline import EXIT_CONNECTION_LOST, Lifeline
from llorch_common.local import add_nats_url_argument, default_data_dir, servers, stack_endpoint
from schemas import DEFAULT_PREFIX, ProtocolError, Subjects

from . import keys
from .app import Edge, build

DEFAULT_LISTEN = "127.0.0.1:8000"
IDENTITY = "client-http"  # the seed `llorch up` makes for it (llorch_orch/natsconf.py)
CONNECT_WAIT_S = 30.0  # give up starting when NATS is unreachable this long
STOP_GRACE_S = 3  # open streams get this long to end once asked to stop
log = logging.getLogger("llorch.http")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llorch http", description=__doc__)
    add_nats_url_argument(p)
    p.add_argument(
        "--data-dir",
        type=Path,
        default=default_data_dir(),
        help=f"a `llorch up` data dir: its URL and the {IDENTITY} identity it made",
    )
    p.add_argument("--prefix", default=DEFAULT_PREFIX, help="subject prefix")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", type=host_port)
    # `llorch up` binds the port itself (so a restarted edge finds it still bound and held)
    p.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    p.add_argument(
        "--api-key-file",
        type=Path,
        metavar="FILE",
        help=f"API keys, one per line (also ${keys.KEYS_ENV}); required off loopback",
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="serve a non-loopback address without API keys (anyone who reaches it may use it)",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=observe.metrics_port_default(),
        help=f"Prometheus metrics on 127.0.0.1:PORT (default ${observe.METRICS_PORT_ENV})",
    )
    add_arguments(p)
    return p


def host_port(text: str) -> tuple[str, int]:
    """`HOST:PORT` (`[::1]:8000` for IPv6)."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def url_of(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def _endpoint(args: argparse.Namespace) -> tuple[str, Credentials]:
    """Flags and env first, else what `llorch up` recorded (its URL, the edge's identity)."""
    creds = Credentials.from_args(args, os.environ)
    return stack_endpoint(args.data_dir, args.nats_url, creds, IDENTITY)


def _socket(args: argparse.Namespace) -> socket.socket:
    if args.listen_fd is not None:
        return socket.socket(fileno=args.listen_fd)  # family and type read from the fd
    host, port = args.listen
    return socket.create_server((host, port), family=_family(host))


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: SIGINT/SIGTERM are the edge's to handle, as in
    every llorch process (uvicorn's re-raises the signal once it has stopped)."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def serve(args: argparse.Namespace) -> int:
    host, port = args.listen
    api_keys = keys.load(args.api_key_file, os.environ)
    keys.check_binding(host, api_keys, args.insecure_no_auth)
    sock = _socket(args)
    url, credentials = _endpoint(args)
    log.info("connecting to %s as %s", url, credentials.describe())
    lifeline = Lifeline("HTTP edge", log)
    nc = await asyncio.wait_for(
        nats.connect(
            servers(url), name="llorch-http", **lifeline.options(), **credentials.connect_options()
        ),
        CONNECT_WAIT_S,
    )
    lifeline.watch(nc)
    app = build(Edge(nc, Subjects(args.prefix), api_keys))
    config = uvicorn.Config(
        app,
        http="httptools",  # the C parser and writer: h11's pure Python costs the edge ~1 ms
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=STOP_GRACE_S,
        server_header=False,
    )
    server = _Server(config)
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    auth = f"{len(api_keys)} API keys" if api_keys else "no API keys"
    log.info("serving %s (%s) on NATS %s", url_of(host, port), auth, url)
    stop_waiting = asyncio.ensure_future(lifeline.until(stop))
    await asyncio.wait((serving, stop_waiting), return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await serving
    if stop_waiting.done() and stop_waiting.result():
        return EXIT_CONNECTION_LOST
    stop_waiting.cancel()
    lifeline.leaving()
    await nc.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    observe.setup("llorch-http", args.metrics_port)
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        return asyncio.run(serve(args))
    except (keys.KeySetupError, ProtocolError, OSError) as exc:
        print(f"llorch http: {exc}", file=sys.stderr)
        return 2
    except TimeoutError:
        print(f"llorch http: NATS unreachable within {CONNECT_WAIT_S:.0f}s", file=sys.stderr)
        return 1
