"""The HTTP edge (`llorch_http`) as a child of `llorch up`: its address, its socket, when it
serves. `llorch up` binds the port itself and hands the socket down, so that a port in use is
said at once, and an edge restarted after a crash finds its port still held (requests wait in
the socket's backlog meanwhile instead of being refused)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
from pathlib import Path

from .stack import HTTP_IDENTITY, READY_TIMEOUT_S, Stack, StackError

DEFAULT = "127.0.0.1:8000"
_PROBE_S = 0.5  # one readiness probe's wait: the child is checked for an exit in between


def address(text: str) -> tuple[str, int] | None:
    """`--http HOST:PORT` (`[::1]:8000` for IPv6), or None for `off`."""
    if text == "off":
        return None
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT or off, got {text!r}")
    return host.strip("[]"), int(port)


def url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        raise StackError(
            f"cannot serve HTTP on {host}:{port} ({exc.strerror}): pass --http HOST:PORT, or "
            "--http off"
        ) from None
    sock.set_inheritable(True)
    return sock


def spawn(stack: Stack, sock: socket.socket, extra: list[str]) -> None:
    seed = stack.seed_args(HTTP_IDENTITY)
    if seed and not Path(seed[1]).is_file():  # a `nats-config` deployment made without it
        raise StackError(
            f"no identity for the HTTP edge in {stack.creds_dir}: remake it with "
            f"`llorch nats-config … --client http`, or pass --http off"
        )
    host, port = sock.getsockname()[:2]
    args = ["llorch_http", "--listen", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    args += ["--listen-fd", str(sock.fileno()), *extra, *seed]
    stack.spawn("http", args, pass_fds=(sock.fileno(),))


async def wait_ready(stack: Stack, sock: socket.socket) -> None:
    """Until the edge answers `GET /healthz` on its socket; a child that exits first is
    reported with its log (a refused binding without API keys, say)."""
    host, port = sock.getsockname()[:2]
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    deadline = asyncio.get_running_loop().time() + READY_TIMEOUT_S
    while asyncio.get_running_loop().time() < deadline:
        stack.check_children()
        with contextlib.suppress(TimeoutError, OSError):
            async with asyncio.timeout(_PROBE_S):
                if await _healthy(host, port):
                    return
    raise StackError(f"the HTTP edge did not answer in {READY_TIMEOUT_S:g}s")


async def _healthy(host: str, port: int) -> bool:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: llorch\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        return status.split(b" ")[1:2] == [b"200"]
    finally:
        writer.close()
